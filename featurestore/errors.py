"""Errors a user can fix (kept free of heavy imports so the CLI starts fast)."""


class BackboneError(RuntimeError):
    """A backbone could not be found, read or matched to the expected layout."""


class StoreError(RuntimeError):
    """A store that is missing, not an emi store, or made with another spec."""
