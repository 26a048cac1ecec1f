"""The handoff engine: small parts wired by ``engine.Engine`` (see docs/architecture.md).

Importing this package imports no part; ``handoffd.handoff.engine`` builds them all.
"""
