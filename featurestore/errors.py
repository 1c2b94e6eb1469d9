"""Errors a user can fix (kept free of heavy imports so the CLI starts fast)."""


class BackboneError(RuntimeError):
    """A backbone could not be found, read or matched to the expected layout."""


class StoreError(RuntimeError):
    """A store that is missing, not an emi store, or made with another spec."""


class StoreDamage(StoreError):
    """Stored bytes or metadata that do not match what was committed (the message names
    the part and array); ``emi store verify`` lists all of it, ``emi store repair``
    drops the damaged parts so the next ``emi extract`` recomputes their clips."""


class StoreLocked(StoreError):
    """Another driver holds the store's writer lock (the message names it)."""


class DeviceError(ValueError):
    """A device was asked for that this machine does not have (``--device cuda``
    without a CUDA GPU)."""


def require_device(device: str) -> str:
    """``auto`` -> ``cuda`` where torch sees a GPU, else ``cpu``; an explicit ``cuda``
    where there is none is a :class:`DeviceError`. The one device rule of extraction,
    training and prediction."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"--device {device}: torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    return device
