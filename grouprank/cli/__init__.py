"""The ``grouprank`` command line (typer + rich)."""
