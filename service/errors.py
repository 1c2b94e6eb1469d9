"""The service's errors: each maps to one HTTP status and says what to do."""

from __future__ import annotations


class ServiceSetupError(Exception):
    """The service cannot start as asked (``emi serve`` exits 2 saying why)."""


class RequestError(Exception):
    """A request the service refuses: ``status`` is its HTTP status, ``error`` a short
    label, the message the detail (what was wrong and what to do)."""

    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def bad_request(detail: str) -> RequestError:
    return RequestError(400, "bad request", detail)


def not_found(detail: str) -> RequestError:
    return RequestError(404, "not found", detail)


def conflict(detail: str) -> RequestError:
    return RequestError(409, "conflict", detail)


def forbidden(detail: str) -> RequestError:
    return RequestError(403, "forbidden", detail)


def too_large(detail: str) -> RequestError:
    return RequestError(413, "too large", detail)


class JobStopped(Exception):
    """Raised inside a running job when its cancel was asked (at a part or epoch
    boundary); the job ends ``cancelled``."""


# A failed job's ``error``: plain words for the kind of problem, by the error's class
# or its nearest base class listed here (the first match along its MRO); the detail
# says what was wrong and what to do.
FAILURE_WORDS = {
    "DiskFull": "disk full",
    "StoreDamage": "store damaged",
    "StoreLocked": "store busy",
    "StoreError": "store problem",
    "BackboneError": "backbone problem",
    "LayerError": "layer not stored",
    "DeviceError": "device not available",
    "ClusterLost": "cluster lost",
    "SlurmError": "SLURM refused the workers",
    "HeadError": "head problem",
    "SettingsError": "bad setting",
    "ManifestError": "problem with the audio or labels",
    "OSError": "file problem",
    "ValueError": "bad input",
}


def failure_words(err: BaseException) -> str:
    """The plain words for ``err``'s kind of failure (never a class name): ``"store
    problem"``, ``"problem with the audio or labels"``, ...; ``"failed"`` otherwise."""
    for cls in type(err).__mro__:
        if cls.__name__ in FAILURE_WORDS:
            return FAILURE_WORDS[cls.__name__]
    return "failed"
