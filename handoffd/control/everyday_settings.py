"""The settings of everyday handoff (``handoff send``, built-in receivers, consent,
notifications) as a model: ``answers.SettingsFields`` inherits them, so they are in the
document's ``Settings`` schema. Checked by ``handoffd.config``."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

Policy = Literal["ask", "accept", "decline"]
Argv = tuple[str, ...]
Rule = Annotated[str, Meta(pattern="^.+=(ask|accept|decline)$")]


class EverydaySettings(msgspec.Struct, frozen=True, kw_only=True):
    """The everyday settings (any of them in a PATCH body)."""

    send_max_files: Annotated[int, Meta(ge=1, le=1024)] | UnsetType = UNSET
    send_max_bytes: Annotated[int, Meta(ge=1, le=64 * 1024**3)] | UnsetType = UNSET
    receive_files: bool | UnsetType = UNSET
    receive_dir: (
        Annotated[str, Meta(description="absolute; empty: <downloads>/Handoff")] | UnsetType
    ) = UNSET
    open_urls: bool | UnsetType = UNSET
    open_command: (
        Annotated[
            Argv, Meta(max_length=32, description="argv before the URL; empty: xdg-open / open")
        ]
        | UnsetType
    ) = UNSET
    text_to_clipboard: bool | UnsetType = UNSET
    clipboard_command: (
        Annotated[
            Argv,
            Meta(
                max_length=32,
                description="argv reading the text on stdin; empty: wl-copy / xclip / pbcopy",
            ),
        ]
        | UnsetType
    ) = UNSET
    consent_builtin: (
        Annotated[Policy, Meta(description="for sessions sent with handoff send")] | UnsetType
    ) = UNSET
    consent_apps: (
        Annotated[
            tuple[Rule, ...], Meta(max_length=256, description="APP_ID=POLICY (first match wins)")
        ]
        | UnsetType
    ) = UNSET
    consent_devices: (
        Annotated[
            tuple[Rule, ...],
            Meta(max_length=256, description="DEVICE=POLICY, device id or name"),
        ]
        | UnsetType
    ) = UNSET
    consent_timeout: Annotated[int, Meta(ge=1, le=3600)] | UnsetType = UNSET
    notifications: bool | UnsetType = UNSET
    offline_wait: Annotated[int, Meta(ge=0, le=30 * 86400)] | UnsetType = UNSET
