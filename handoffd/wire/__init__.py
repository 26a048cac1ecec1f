"""What the devices and handoff-server both speak, in one place (pure: no I/O, no clock reads).

- ``auth``: HTTP request signatures and the WebSocket challenge (sign and verify);
- ``invite``: the pairing invite URL and short code (make and parse);
- ``ice``: STUN/TURN URLs and the ``/v1/ice`` answer's check;
- ``messages``: the server's WebSocket messages a device reads (relay tickets, errors);
- ``relayhello``: the hello two devices exchange inside the relay's TLS;
- ``qr``: an invite URL as a QR code.
"""
