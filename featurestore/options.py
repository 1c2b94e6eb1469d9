"""The settings of extraction and of backbones: one place, importable without torch.

The CLI builds its options from these (choices and defaults), and the library's
functions take the same defaults, so a notebook call and a command line behave alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


def user_cache_dir() -> Path:
    """emi's user cache (score stores, weight hashes): ``$EMI_CACHE``, else
    ``~/.cache/emi``."""
    return Path(os.environ.get("EMI_CACHE", Path.home() / ".cache" / "emi"))


DEFAULT_MODEL = "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"
RANDOM_MARK = "emi_random_weights"  # config.json key of a random stand-in backbone
DEVICES = ("auto", "cpu", "cuda")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_DTYPE = "float32"  # of a new feature set (bfloat16 only by choice: cpu_dtype.py)
GPU_BATCH_SECONDS = 120.0  # padded audio seconds per forward on a GPU (CPU: one clip)
MIN_PART_SECONDS = 30.0
CPU_PART_SECONDS = 600.0  # default audio per part on CPU workers (minutes of work)
GPU_PART_SECONDS = 3600.0  # on GPU workers (seconds of work: fixed costs per part matter)

# Random backbones for tests and demos (``emi model init-random --size``).
BACKBONE_SIZES: dict[str, dict] = {
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        norm="layer",
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(256,) * 7,
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
        norm="layer",
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_dim=(512,) * 7,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        norm="group",
    ),
    "large-robust-12": dict(
        hidden_size=1024,
        num_hidden_layers=12,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_dim=(512,) * 7,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        norm="layer",
    ),
}


CLUSTERS = ("local", "slurm")  # where a run's dask workers come from (--cluster)


@dataclass(frozen=True)
class SlurmOptions:
    """Dask workers as SLURM jobs (dask-jobqueue): what ``--cluster-*`` set over the
    ``jobqueue.slurm`` section of the dask configuration (None: the configuration's
    value, else emi's default).

    Each job runs one ``emi worker`` with one task thread; ``cores`` are the job's CPUs
    (``--cpus-per-task``), which its torch and audio decoding use.

    Attributes:
        jobs: worker jobs kept running for the whole run (extraction); a job that ends
            is replaced.
        max_jobs: with ``jobs`` None, jobs started on demand up to this many and
            released after ``idle_s`` without work (the service).
        queue: the partition (``sbatch -p``).
        account: the account charged (``sbatch -A``).
        walltime: each job's time limit, ``HH:MM:SS``.
        cores: CPUs per job.
        memory: memory per job (``16GB``).
        idle_s: seconds a worker may sit idle before its job is released (on demand).
        log_directory: where the jobs' ``.out``/``.err`` files go (a folder the nodes
            see); None: the configuration's, else ``slurm-logs`` in emi's user cache.
    """

    jobs: int | None = None
    max_jobs: int | None = None
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    cores: int | None = None
    memory: str | None = None
    idle_s: float = 60.0
    log_directory: str | None = None

    @property
    def planned_jobs(self) -> int:
        """The most worker jobs this cluster runs at once."""
        return self.jobs or self.max_jobs or 1


@dataclass(frozen=True)
class FeatureChoice:
    """Which features a run makes (what their fingerprint holds) and which feature set
    of the store receives them.

    Attributes:
        model: checkpoint folder or hub id; None: the store's backbone, for a new store
            :data:`DEFAULT_MODEL`.
        revision: hub revision of ``model``.
        compute_dtype: the backbone's compute dtype, one of :data:`COMPUTE_DTYPES` (in
            the fingerprint: features of two dtypes never share a set); None: the
            set's, for a new set ``float32`` (``featurestore.cpu_dtype`` says when
            ``bfloat16`` is the faster choice on a CPU).
        layers: the transformer layers to store: ``"last"``, ``"all"``, ``"0,6,12"``
            or a tuple of layer numbers (the last layer is always stored; in the
            fingerprint); None: the store's layers, for a new store ``"last"``.
        max_seconds: keep each clip's first seconds (the paper: 12).
        window_seconds: encode longer clips in windows of this length; None: never.
        feature_set: the store's feature set to extract into (created where it is
            new; a lower-case name); None: the set made with this run's backbone (its
            settings are the defaults), else the default set; for a new store the
            backbone's name.
        new_set_name: with ``feature_set`` None, the name of the set to add where the
            store has no set of these features (with the fingerprint appended where the
            name is taken); chosen under the writer lock.
        expect_fingerprint: refuse, before any work, to make other features.
    """

    model: str | None = None
    revision: str | None = None
    compute_dtype: str | None = None
    layers: str | tuple[int, ...] | None = None
    max_seconds: float | None = None
    window_seconds: float | None = 30.0
    feature_set: str | None = None
    new_set_name: str | None = None
    expect_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.compute_dtype is not None and self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}")


@dataclass(frozen=True)
class ComputeSettings:
    """Where and how the work runs.

    Attributes:
        device: ``auto`` (cuda on workers with a GPU, else cpu), ``cpu`` or ``cuda``.
        workers: local dask worker processes (1 runs in-process).
        scheduler: address of a running dask scheduler (also ``DASK_SCHEDULER_ADDRESS``).
        slurm: the workers are SLURM jobs with these settings (released at the end;
            with a client given, that client's workers are); None: ``workers``
            processes here, or ``scheduler``.
        batch_seconds: padded audio seconds per forward; None: 0 on CPU, 120 on GPU.
        decode_threads: threads per worker decoding ahead of the device (0: decode,
            forward and write in turn); None: ``EMI_DECODE_THREADS``, else on GPU
            workers their share of the CPUs, on CPU 0.
        part_seconds: audio seconds per part (one task, one store group); None:
            :data:`CPU_PART_SECONDS`, or :data:`GPU_PART_SECONDS` on GPU workers.
        dashboard: serve the local cluster's dashboard on 127.0.0.1:8787.
    """

    device: str = "auto"
    workers: int = 1
    scheduler: str | None = None
    slurm: SlurmOptions | None = None
    batch_seconds: float | None = None
    decode_threads: int | None = None
    part_seconds: float | None = None
    dashboard: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.slurm is not None and self.scheduler:
            raise ValueError("give a scheduler or slurm settings, not both")
        if self.decode_threads is not None and self.decode_threads < 0:
            raise ValueError(f"decode threads must be 0 or more, not {self.decode_threads}")

    @property
    def local(self) -> bool:
        """Whether a run starts its own LocalCluster (its workers see this machine)."""
        if self.slurm is not None:
            return False
        return not (self.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"))


@dataclass(frozen=True)
class WritePolicy:
    """What a run may read, replace in the store, and wait for.

    Attributes:
        refresh_changed: recompute stored clips whose file (the same source path)
            changed since.
        replace_other_sources: also replace a stored clip by a file of the same clip
            id from another source path with other content (never done otherwise: such
            a file is a failure naming both paths).
        resolved_paths: the records' paths were resolved (symbolic links followed)
            when their folder was listed, as the service's are: a clip reached through
            a link swapped in since is refused, never read.
        wait_for_lock_s: wait this long for another writer of the store to finish
            (saying so on stderr) instead of failing at once.
        storage_options: fsspec options for an ``s3://`` store.
    """

    refresh_changed: bool = False
    replace_other_sources: bool = False
    resolved_paths: bool = False
    wait_for_lock_s: float = 0.0
    storage_options: dict = field(default_factory=dict)


_GROUPS = {"features": FeatureChoice, "compute": ComputeSettings, "writing": WritePolicy}


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of one extraction run (the ``emi extract`` options, same defaults), by
    concern: :class:`FeatureChoice`, :class:`ComputeSettings`, :class:`WritePolicy`.
    :meth:`of` takes them by name (``ExtractOptions.of(model=..., workers=2)``).

    Attributes:
        features: which features, into which set.
        compute: where and how the work runs.
        writing: what the run may read, replace and wait for.
        quiet: no progress bar nor notes on stderr.
    """

    features: FeatureChoice = field(default_factory=FeatureChoice)
    compute: ComputeSettings = field(default_factory=ComputeSettings)
    writing: WritePolicy = field(default_factory=WritePolicy)
    quiet: bool = False

    @classmethod
    def of(cls, **settings) -> ExtractOptions:
        """Options from settings named as the groups' fields (and ``quiet``).

        Raises:
            TypeError: a name that no group has.
        """
        return cls().but(**settings)

    def but(self, **settings) -> ExtractOptions:
        """These options with the named settings changed (each in its group)."""
        quiet = settings.pop("quiet", self.quiet)
        groups = {}
        for name, group in _GROUPS.items():
            names = {f.name for f in fields(group)}
            mine = {k: settings.pop(k) for k in list(settings) if k in names}
            groups[name] = replace(getattr(self, name), **mine) if mine else getattr(self, name)
        if settings:
            raise TypeError(f"no extraction setting named {', '.join(sorted(settings))}")
        return ExtractOptions(**groups, quiet=quiet)


@dataclass(frozen=True)
class RunHooks:
    """What a caller hands a run beside its settings: a client to run on, and calls
    that follow and stop it.

    Attributes:
        client: a running dask client to submit to (a service keeps one, with its
            workers' backbones loaded, across runs); None: one per run, as the
            compute settings say.
        on_part: called with the summary so far after every committed part (progress).
        should_stop: polled a few times a second while the run works (and while
            waiting for the writer lock); once it answers True, parts not yet started
            are skipped, each running part stops after its current batch and commits
            the clips it finished, and the summary says ``stopped``.
    """

    client: object | None = field(default=None, repr=False)
    on_part: Callable[[object], None] | None = field(default=None, repr=False)
    should_stop: Callable[[], bool] | None = field(default=None, repr=False)

    def stop_asked(self) -> bool:
        return self.should_stop is not None and self.should_stop()
