"""Blocking file work of the receiver (call through ``asyncio.to_thread``).

``partial/<handoff-id>/<index>`` files (dirs 0700), resume by re-hashing up to the
checkpoint (anything past it is truncated), the atomic commit into ``inbox/<handoff-id>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handoffd.handoff.offer import HANDOFF_ID_LEN, READ_BLOCK, check_handoff_id, check_name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


@dataclass
class ItemWriter:
    """An open partial file of one item (or, for a small item, its bytes in ``memory``):
    where it continues, its running hash."""

    fd: int
    offset: int
    hasher: hashlib._Hash
    memory: bytearray | None = None

    @classmethod
    def in_memory(cls) -> ItemWriter:
        """A small item held in memory until the commit writes it (no partial file)."""
        return cls(fd=-1, offset=0, hasher=hashlib.sha256(), memory=bytearray())


def _write_new(path: Path, data: bytes | bytearray) -> None:
    """Create ``path`` (0600, never an existing file or a link) with ``data``, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    """Partial files and the inbox of one daemon home. Every method blocks: use a thread."""

    def __init__(self, partial: Path, inbox: Path) -> None:
        self.partial = partial
        self.inbox = inbox

    def partial_dir(self, handoff_id: str) -> Path:
        """``partial/<handoff-id>``."""
        return self.partial / check_handoff_id(handoff_id)

    def inbox_dir(self, handoff_id: str) -> Path:
        """``inbox/<handoff-id>``."""
        return self.inbox / check_handoff_id(handoff_id)

    def open_item(self, handoff_id: str, index: int, checkpoint: int) -> ItemWriter:
        """Open item ``index`` to continue at ``checkpoint``: truncate past it, re-hash up to it.

        If the file holds fewer bytes than the checkpoint claims, start again at 0.
        """
        directory = self.partial_dir(handoff_id)
        _mkdir_private(self.partial)
        _mkdir_private(directory)
        path = directory / str(int(index))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            offset = checkpoint if 0 <= checkpoint <= size else 0
            os.ftruncate(fd, offset)
            hasher = hashlib.sha256()
            position = 0
            while position < offset:
                block = os.pread(fd, min(READ_BLOCK, offset - position), position)
                if not block:
                    raise OSError("partial file shrank while re-hashing")
                hasher.update(block)
                position += len(block)
        except BaseException:
            os.close(fd)
            raise
        return ItemWriter(fd=fd, offset=offset, hasher=hasher)

    @staticmethod
    def write(writer: ItemWriter, offset: int, chunks: Sequence[bytes]) -> None:
        """Write consecutive chunks at ``offset`` and hash them."""
        if offset != writer.offset:
            raise OSError(f"write at {offset}, expected {writer.offset}")
        if writer.memory is not None:
            for data in chunks:
                writer.memory += data
                writer.offset += len(data)
                writer.hasher.update(data)
            return
        for data in chunks:
            view = memoryview(data)
            while view:
                n = os.pwrite(writer.fd, view, writer.offset)
                writer.offset += n
                view = view[n:]
            writer.hasher.update(data)

    def open_items(self, handoff_id: str, resume: Mapping[int, int]) -> dict[int, ItemWriter]:
        """``open_item`` for each ``index: checkpoint`` (one thread hop for a session's many
        small items); on failure the ones already opened are closed."""
        opened: dict[int, ItemWriter] = {}
        try:
            for index, checkpoint in resume.items():
                opened[index] = self.open_item(handoff_id, index, checkpoint)
        except BaseException:
            Staging.close_many(list(opened.values()))
            raise
        return opened

    @staticmethod
    def write_many(jobs: Sequence[tuple[ItemWriter, int, Sequence[bytes]]]) -> None:
        """``write`` for each ``(writer, offset, chunks)``, in order."""
        for writer, offset, chunks in jobs:
            Staging.write(writer, offset, chunks)

    @staticmethod
    def sync_many(writers: Sequence[ItemWriter]) -> None:
        """``sync`` each."""
        for writer in writers:
            Staging.sync(writer)

    @staticmethod
    def close_many(writers: Sequence[ItemWriter]) -> None:
        """``close_item`` each (idempotent)."""
        for writer in writers:
            Staging.close_item(writer)

    @staticmethod
    def sync(writer: ItemWriter) -> None:
        """Make what was written durable (an item in memory: at the commit)."""
        if writer.fd >= 0:
            os.fsync(writer.fd)

    @staticmethod
    def close_item(writer: ItemWriter) -> None:
        """Close the file (idempotent)."""
        if writer.fd >= 0:
            os.close(writer.fd)
            writer.fd = -1

    def commit(
        self,
        handoff_id: str,
        files: Sequence[tuple[int, str]],
        manifest_json: Mapping[str, Any],
        held: Mapping[int, bytes | bytearray] | None = None,
    ) -> Path:
        """Move the verified partial files (and the items ``held`` in memory) into
        ``inbox/<id>/`` under their names, atomically.

        The files are renamed (or written) into ``inbox/.tmp-<id>/`` with ``manifest.json``,
        everything is fsynced, then one ``os.replace`` makes the directory appear.
        """
        held = held or {}
        src = self.partial_dir(handoff_id)
        final = self.inbox_dir(handoff_id)
        tmp = self.inbox / f".tmp-{handoff_id}"
        _mkdir_private(self.inbox)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(mode=0o700)
        for index, name in files:
            target = tmp / check_name(name)
            if index in held:
                _write_new(target, held[index])
                continue
            source = src / str(int(index))
            if not source.exists():  # an empty item never written
                source.touch(mode=0o600)
            os.replace(source, target)
        _write_new(
            tmp / "manifest.json",
            json.dumps(manifest_json, ensure_ascii=False, indent=1).encode("utf-8"),
        )
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.inbox)
        shutil.rmtree(src, ignore_errors=True)
        return final

    def committed_manifest(self, handoff_id: str) -> dict[str, Any] | None:
        """``inbox/<id>/manifest.json`` if a commit finished (e.g. before a crash), else None."""
        path = self.inbox_dir(handoff_id) / "manifest.json"
        try:
            data = json.loads(path.read_bytes()[: 4 * 1024 * 1024])
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def discard_partial(self, handoff_id: str) -> None:
        """Delete ``partial/<id>``."""
        shutil.rmtree(self.partial_dir(handoff_id), ignore_errors=True)

    def discard_item(self, handoff_id: str, index: int) -> None:
        """Delete one partial item (after a hash mismatch)."""
        with contextlib.suppress(FileNotFoundError):
            (self.partial_dir(handoff_id) / str(int(index))).unlink()

    def discard_inbox(self, handoff_id: str) -> None:
        """Delete ``inbox/<id>``."""
        shutil.rmtree(self.inbox_dir(handoff_id), ignore_errors=True)

    def held_bytes(self, handoff_id: str) -> int:
        """Bytes currently in ``partial/<id>``."""
        try:
            return sum(p.stat().st_size for p in self.partial_dir(handoff_id).iterdir())
        except OSError:
            return 0

    def free_bytes(self) -> int:
        """Free space where partial files go."""
        _mkdir_private(self.partial)
        return shutil.disk_usage(self.partial).free

    def partial_ids(self) -> list[str]:
        """Handoff ids with a partial directory."""
        try:
            names = [p.name for p in self.partial.iterdir()]
        except FileNotFoundError:
            return []
        return [n for n in names if len(n) == HANDOFF_ID_LEN and set(n) <= set("0123456789abcdef")]

    def clean_tmp(self) -> None:
        """Remove ``inbox/.tmp-*`` left by a crash during a commit."""
        try:
            for p in self.inbox.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass
