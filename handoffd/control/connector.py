"""The SDK's connection: talks only to a control socket that our own uid serves.

Before connecting, the socket's directory must pass ``check_private_dir``
(ours, not writable by group or others); once connected, and before a byte
of the request is written, the server's uid (``SO_PEERCRED``) must be our
effective uid. Either failure raises ``HandoffError`` with a stable code
(``home-unsafe``, ``daemon-wrong-user``) and nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from handoffd.ownership import check_private_dir
from handoffd.peercred import check_socket_server


async def open_own_socket(
    path: str | os.PathLike[str],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams on the control socket ``path``, once its directory and its server are ours."""
    directory = Path(path).parent
    # A missing directory: nothing to trust or distrust; the connect says "not running".
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(check_private_dir, directory)  # stat calls: off the loop
    reader, writer = await asyncio.open_unix_connection(os.fspath(path))
    try:
        check_socket_server(writer.get_extra_info("socket"), path)
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer
