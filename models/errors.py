"""Errors a user can fix (free of heavy imports so the CLI starts fast)."""


class HeadError(ValueError):
    """A head folder that is missing, malformed, or made for another store."""
