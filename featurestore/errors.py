"""Errors a user can fix, and the exit codes (kept free of heavy imports so the CLI
starts fast)."""

EXIT_OK = 0  # all done
EXIT_UNEXPECTED = 1  # a bug or an environment problem: the traceback says where
EXIT_USAGE = 2  # bad option, missing file, mismatched or damaged store, locked store
EXIT_CLIPS_FAILED = 3  # the run finished, but some clips could not be stored (listed)


class OptionNamed:
    """An error about one setting: ``option`` is its name in the library
    (``layers``, ``feature_set``) and the message starts with it. The CLI says it as
    its flag (``--layers``, ``--feature-set``), the service as its request field:
    library messages never name a flag."""

    def __init__(self, message: str = "", *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def as_flag(err: Exception) -> str:
    """``err``'s message with its setting named as the CLI's flag."""
    text, option = str(err), getattr(err, "option", None)
    if option and text.startswith(option):
        return "--" + option.replace("_", "-") + text[len(option) :]
    return text


class BackboneError(OptionNamed, RuntimeError):
    """A backbone could not be found, read or matched to the expected layout."""


class StoreError(OptionNamed, RuntimeError):
    """A store that is missing, not an emi store, or made with another spec."""


class StoreDamage(StoreError):
    """Stored bytes or metadata that do not match what was committed (the message names
    the part and array); ``emi store verify`` lists all of it, ``emi store repair``
    drops the damaged parts so the next ``emi extract`` recomputes their clips."""


class StoreLocked(StoreError):
    """Another driver holds the store's writer lock (the message names it)."""


class ClusterLost(RuntimeError):
    """The dask cluster went away during a run (its scheduler stopped, or the client
    lost it): the parts committed before are kept, and running again resumes."""


class DeviceError(OptionNamed, ValueError):
    """A device was asked for that this machine does not have (``--device cuda``
    without a CUDA GPU)."""


class ArgumentError(ValueError):
    """A Python API call with an argument that breaks its rule (the message names the
    argument, what it is and what it must be)."""


class LayerError(OptionNamed, ValueError):
    """Layers asked for that the backbone or the store does not have (the message names
    the option and the layers there are)."""


class SlurmError(RuntimeError):
    """SLURM could not run emi's worker jobs: sbatch refused them, SLURM will never start
    them as asked, or their workers keep failing to start (the message says which, with
    the option to change or the job's log)."""
