"""Who serves or uses a Unix socket: its peer's uid (SO_PEERCRED / LOCAL_PEERCRED)."""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import Any

from handoffd.errors import HandoffError

WRONG_USER = "daemon-wrong-user"

# A plain str, so type checkers keep both branches of peer_uid.
_PLATFORM: str = sys.platform


def peer_uid(sock: Any) -> int | None:
    """The uid of a Unix socket's peer (SO_PEERCRED / LOCAL_PEERCRED); None if unknown."""
    try:
        if _PLATFORM.startswith("linux"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            return int(uid)
        if _PLATFORM == "darwin":
            # struct xucred {u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]}
            sol_local, local_peercred = 0, 0x001
            creds = sock.getsockopt(sol_local, local_peercred, 76)
            _version, uid = struct.unpack_from("=II", creds)
            return int(uid)
    except OSError:
        return None
    return None


def check_socket_server(sock: Any, path: os.PathLike[str] | str) -> None:
    """HandoffError(daemon-wrong-user) unless the server of connected ``sock`` is our euid."""
    uid = peer_uid(sock)
    if uid != os.geteuid():
        raise HandoffError(
            f"refusing the control socket {os.fspath(path)}: it is served by uid {uid}, "
            f"not by us (uid {os.geteuid()}); another user may be impersonating handoffd",
            code=WRONG_USER,
        )
