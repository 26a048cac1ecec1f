"""The SDK's Unix connector: talks only to a control socket that our own uid serves.

Before connecting, the socket's directory must pass ``check_private_dir``
(ours, not writable by group or others); once connected, and before a byte
of the request is written, the server's uid (``SO_PEERCRED``) must be our
effective uid. Either failure raises ``HandoffError`` with a stable code
(``home-unsafe``, ``daemon-wrong-user``) and nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from handoffd.errors import HandoffError
from handoffd.ownership import check_private_dir
from handoffd.peercred import check_socket_server

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace


class OwnSocketConnector(aiohttp.UnixConnector):
    """A UnixConnector that refuses a socket in another user's directory or served by one."""

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> ResponseHandler:
        directory = Path(self.path).parent
        # A missing directory: nothing to trust or distrust; the connect says "not running".
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(check_private_dir, directory)  # stat calls: off the loop
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        try:
            if transport is None:
                raise HandoffError(
                    "the control connection closed at once", code="daemon-disconnected"
                )
            check_socket_server(transport.get_extra_info("socket"), self.path)
        except BaseException:
            if transport is not None:
                transport.abort()
            raise
        return proto
