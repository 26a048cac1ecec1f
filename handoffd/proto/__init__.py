"""Wire protocol: messages, codec, framing and the transfer state machine (pure, no I/O)."""
