"""``handoff`` subcommands in their own modules (registered by ``handoffd.cli``), and what only
the command line needs: a lean synchronous client for quick reads (``quick``)."""
