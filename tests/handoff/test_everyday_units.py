"""Units of everyday handoff: building what ``handoff send`` sends (real files in tmp_path),
the built-in file receiver's names, the consent policy and its settings."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from handoffd.config import Settings, SettingsFile, rule_for
from handoffd.errors import ConfigError, InvalidRequestError
from handoffd.events import EventBus
from handoffd.handoff import sendables
from handoffd.handoff.consent import Consent
from handoffd.handoff.desktop import Desktop
from handoffd.handoff.receivers import relative_parts, save_files
from handoffd.handoff.tables import InboxEntry
from handoffd.handoff.timings import SystemClock


def _refused(code: str, call: object) -> None:
    assert callable(call)
    with pytest.raises(InvalidRequestError) as caught:
        call()
    assert caught.value.code == code, caught.value.message


def test_urls_must_be_http_with_a_host() -> None:
    assert sendables.url("https://example.org/a?b=c").app_id == sendables.APP_URL
    for bad in ("javascript:alert(1)", "file:///etc/passwd", "http://", "https://a b", "ftp://x"):
        _refused("url-invalid", lambda bad=bad: sendables.url(bad))
    _refused("url-too-long", lambda: sendables.url("https://x/" + "a" * 9000))


def test_text_limits() -> None:
    assert sendables.text("hi").items[0].text == "hi"
    _refused("text-empty", lambda: sendables.text(""))
    _refused("text-too-large", lambda: sendables.clipboard("é" * (512 * 1024 + 1)))


def test_a_folder_keeps_its_structure_with_distinct_item_names(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_text("1")
    (top / "sub" / "a.txt").write_text("22")
    (top / "sub" / "inside").symlink_to(top / "a.txt")  # stays inside: followed
    s = sendables.files([str(top)], max_files=10, max_bytes=100)
    names = [i.name for i in s.items]
    assert len(set(names)) == len(names) == 3
    assert sorted(s.context["files"].values()) == ["top/a.txt", "top/sub/a.txt", "top/sub/inside"]
    assert s.title == "top"


def test_files_refusals(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    _refused(
        "path-not-file", lambda: sendables.files([str(tmp_path / "fifo")], max_files=9, max_bytes=9)
    )
    _refused(
        "path-missing", lambda: sendables.files([str(tmp_path / "nope")], max_files=9, max_bytes=9)
    )
    _refused("path-not-absolute", lambda: sendables.files(["rel"], max_files=9, max_bytes=9))
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    (leaky / "out").symlink_to(tmp_path / "fifo")
    _refused("path-symlink-out", lambda: sendables.files([str(leaky)], max_files=9, max_bytes=9))
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused("path-empty", lambda: sendables.files([str(empty)], max_files=9, max_bytes=9))
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        (big / str(i)).write_text("xxxx")
    _refused("too-many-files", lambda: sendables.files([str(big)], max_files=2, max_bytes=99))
    _refused("too-many-bytes", lambda: sendables.files([str(big)], max_files=9, max_bytes=10))


def _entry(tmp_path: Path, files: dict[str, str], paths: dict[str, str]) -> InboxEntry:
    items = []
    for name, content in files.items():
        src = tmp_path / "inbox" / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(content)
        items.append({"type": "file", "name": name, "path": str(src), "size": len(content)})
    return InboxEntry(
        "0" * 32, "1" * 32, sendables.APP_FILES, "t", {"kind": "files", "files": paths},
        "dev", "laptop", tuple(items), "received", 0.0, None,
    )  # fmt: skip


def test_hostile_relative_paths_fall_back_to_the_item_name(tmp_path: Path) -> None:
    entry = _entry(tmp_path, {"a.txt": "x"}, {"a.txt": "../../etc/a.txt"})
    assert relative_parts(entry, entry.items[0]) == ["a.txt"]
    entry = _entry(tmp_path, {"b.txt": "x"}, {"b.txt": "d/./b.txt"})
    assert relative_parts(entry, entry.items[0]) == ["b.txt"]
    entry = _entry(tmp_path, {"c.txt": "x"}, {"c.txt": "d/e/c.txt"})
    assert relative_parts(entry, entry.items[0]) == ["d", "e", "c.txt"]


def test_saving_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "out"
    entry = _entry(tmp_path, {"a.txt": "new", "b": "b"}, {"a.txt": "a.txt", "b": "f/b"})
    out.mkdir()
    (out / "a.txt").write_text("old")
    (out / "f").mkdir()
    made = save_files(entry, out)
    assert (out / "a.txt").read_text() == "old"
    assert (out / "a (2).txt").read_text() == "new"
    assert (out / "f (2)" / "b").read_text() == "b"
    assert sorted(p.name for p in made) == ["a (2).txt", "f (2)"]


def test_consent_rules_are_validated() -> None:
    Settings(consent_devices=("laptop=decline",), consent_apps=("org.x=accept",))
    for bad in (("laptop",), ("laptop=maybe",), ("=ask",)):
        with pytest.raises(ConfigError):
            Settings(consent_devices=bad)
    with pytest.raises(ConfigError):
        Settings(consent_builtin="sometimes")
    assert rule_for(("a=ask", "b=decline"), "x", "b") == "decline"
    assert rule_for(("a=ask",), "b") is None


@pytest.mark.asyncio
async def test_consent_policy_order(tmp_path: Path) -> None:
    settings = SettingsFile(tmp_path / "config.toml", Settings())
    consent = Consent(settings, Desktop(settings), EventBus(), SystemClock(), lambda c, n: c)
    assert consent.policy(sendables.APP_FILES, "id1", "laptop") == "ask"
    assert consent.policy("org.example.notes", "id1", "laptop") == "accept"
    await settings.update({"consent_devices": ["laptop=decline"]})
    assert consent.policy("org.example.notes", "id1", "laptop") == "decline"
    assert consent.policy("org.example.notes", "id2", "desk") == "accept"
    await settings.update({"consent_apps": ["org.example.notes=accept"]})
    assert consent.policy("org.example.notes", "id1", "laptop") == "accept"  # app rule first
    await asyncio.sleep(0)
