"""handoffd: move a live app session between a user's devices."""

__version__ = "0.1.0"
