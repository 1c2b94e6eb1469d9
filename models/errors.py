"""Errors a user can fix (free of heavy imports so the CLI starts fast)."""


class HeadError(ValueError):
    """A head folder that is missing, malformed, or made for another store."""


class SettingsError(ValueError):
    """A training setting, grid file or head name that breaks its rule (the message
    names the head, key and rule)."""
