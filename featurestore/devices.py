"""The one device rule of extraction, training and prediction."""

from __future__ import annotations

from featurestore.errors import DeviceError


def require_device(device: str) -> str:
    """``auto`` -> ``cuda`` where torch sees a GPU, else ``cpu``; an explicit ``cuda``
    where there is none is a :class:`DeviceError`. The one device rule of extraction,
    training and prediction."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device}: torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}); use the device cpu or auto",
            option="device",
        )
    return device
