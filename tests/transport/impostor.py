"""An impostor on the LAN: a signaling port that a caller is tricked into dialing as a device.

``python -m tests.transport.impostor RECORD`` listens on 127.0.0.1 (TLS 1.3, like
a real listener), prints ``ready PORT``, and for every connection appends all
the bytes it reads inside TLS to the file RECORD; after the first frame it sends
an error frame ``cert-revoked`` (the refusal an attacker would forge to end the
handoff), then keeps reading what the caller sends next for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from handoffd.transport.signaling import encode_error, server_context


async def main(record: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        try:
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                async with asyncio.timeout(5):
                    head = await reader.readexactly(4)
                    got += head
                    got += await reader.readexactly(int.from_bytes(head, "big"))
                    writer.write(encode_error("cert-revoked", "your device was revoked, ATTACKER"))
                    await writer.drain()
                    while data := await reader.read(65536):
                        got += data
        except asyncio.IncompleteReadError as exc:
            got += exc.partial
        finally:
            with record.open("ab") as f:
                f.write(bytes(got) + b"\n--connection--\n")
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context())
    sys.stdout.write(f"ready {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
