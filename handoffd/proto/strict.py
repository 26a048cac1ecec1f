"""The one bounded, strict msgpack decoder for small fixed-shape messages (envelopes, hellos, frames).

Every length is bounded before msgpack allocates anything; map keys must be
text (a map mixing text and binary keys cannot be compared or sorted later);
no extension types; no bytes after the value. Anything else is a
``MsgpackError`` (a ``ProtocolError``, code ``msgpack-malformed``), which each
caller turns into its own error with its own code.
"""

from __future__ import annotations

from typing import Any

import msgpack

from handoffd.errors import ProtocolError

__all__ = ["MsgpackError", "unpack"]


class MsgpackError(ProtocolError):
    """The bytes are not one msgpack value within the bounds."""

    default_code = "msgpack-malformed"


def _text_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    if not all(type(key) is str for key, _ in pairs):
        raise MsgpackError("map keys must be text")
    return dict(pairs)


def unpack(data: bytes, *, max_str: int, max_bin: int, max_array: int, max_map: int) -> Any:
    """One msgpack value from all of ``data`` within the bounds; MsgpackError otherwise."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_text_keys,
            max_str_len=max_str,
            max_bin_len=max_bin,
            max_array_len=max_array,
            max_map_len=max_map,
            max_ext_len=0,
        )
    except MsgpackError:
        raise
    # On hostile input msgpack raises ValueError, TypeError, OverflowError, its own
    # UnpackException subclasses (ExtraData for trailing bytes) and RecursionError.
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise MsgpackError(f"not valid msgpack: {type(exc).__name__}") from exc
