"""The operator's settings of one service (the ``emi serve`` options, same defaults)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.options import SlurmOptions
from service.errors import ServiceSetupError

if TYPE_CHECKING:
    from service.state import StateFolder

MiB = 2**20
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_SERVER = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"  # where clients look by default
DEFAULT_MAX_FILE_BYTES = 1024 * MiB  # one uploaded file (or archive member)
DEFAULT_MAX_REQUEST_BYTES = 4096 * MiB  # one upload request, all files
DEFAULT_MAX_FILES = 10_000  # files per upload request (or members of its archive)
MAX_BODY_BYTES = 1 * MiB  # a JSON request body
DEFAULT_CONCURRENT_JOBS = 2
DEFAULT_CALLBACK_BACKOFF_S = 1.0
DEFAULT_CALLBACK_TIMEOUT_S = 10.0  # one callback attempt, all of it
DEFAULT_KEEP_DAYS = 30.0  # uploads and finished jobs' results kept this long
DEFAULT_MAX_ARCHIVE_RATIO = 100.0  # an archive's unpacked bytes per packed byte
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# the names clients give (checked by the request models)
STORE_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
HEAD_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"
TRAINED_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a train job's name: one level
SCORE_STORE_PREFIX = "score-"  # the content-keyed stores of score jobs, one per features


def is_url(location: str) -> bool:
    return "://" in location


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(entry: str) -> str:
    """The host of an ``--allowed-host`` entry (``name``, ``name:port``, ``[::1]:8000``
    or ``https://name``), lower case."""
    entry = entry.strip().lower().partition("://")[2] or entry.strip().lower()
    entry = entry.split("/", 1)[0]
    if entry.startswith("["):
        return entry[1 : entry.find("]")] if "]" in entry else entry.strip("[]")
    name, _, port = entry.rpartition(":")
    return name if name and port.isdigit() else entry


def read_tokens(path: str | os.PathLike) -> list[str]:
    """The bearer tokens of a token file: one per line; blank lines and ``#`` comments
    are skipped.

    Raises:
        ServiceSetupError: unreadable, or no token in it, or a token shorter than 16.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ServiceSetupError(f"--token-file {path}: {err.strerror or err}") from err
    try:  # a byte order mark and CRLF line ends (a file saved on Windows) are fine
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ServiceSetupError(f"--token-file {path}: not UTF-8 text") from None
    tokens, numbered = [], []
    for number, line in enumerate(lines, 1):
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token)
            numbered.append(number)
    if not tokens:
        raise ServiceSetupError(f"--token-file {path}: holds no token (one per line)")
    placeholder = [n for n, t in zip(numbered, tokens, strict=True) if is_placeholder(t)]
    if placeholder:
        raise ServiceSetupError(
            f"--token-file {path}: line {placeholder[0]} is the deployment template's "
            f"placeholder ({PLACEHOLDER}...); put long random tokens there "
            "(python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    odd = [
        n
        for n, t in zip(numbered, tokens, strict=True)
        if not (t.isascii() and t.isprintable()) or any(c.isspace() for c in t)
    ]
    if odd:
        raise ServiceSetupError(
            f"--token-file {path}: line {odd[0]} holds spaces or characters that are not "
            "printable ASCII; a client could never send it. One token per line, "
            "letters, digits and punctuation only"
        )
    short = [i for i, t in enumerate(tokens, 1) if len(t) < 16]
    if short:
        raise ServiceSetupError(
            f"--token-file {path}: token {short[0]} is shorter than 16 characters; "
            "use long random tokens (python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    return tokens


PLACEHOLDER = "REPLACE-ME"  # what deploy/'s secret templates hold until an operator fills them


def is_placeholder(secret: str | bytes) -> bool:
    """Whether ``secret`` is a deployment template's placeholder, never a real secret."""
    text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
    return text.strip().startswith(PLACEHOLDER)


@dataclass
class ServiceConfig:
    """Attributes:
    stores: folder or ``s3://`` prefix holding the stores the service manages, by name
        (``NAME.zarr``).
    heads: the head registry: a folder of head folders (a grid's folder holds more).
    state: the state folder (job table, uploads, results).
    source_roots: folders or ``s3://`` prefixes that sources may come from.
    tokens: accepted bearer tokens; empty: no authentication (loopback only).
    workers, scheduler, slurm: the dask cluster: local worker processes, a scheduler, or
        workers as SLURM jobs started on demand (``featurestore.slurm``).
    model: the backbone of extract jobs into new stores; None: emi's default.
    device: ``auto``, ``cpu`` or ``cuda``: the dask workers' device (extraction). The
        service's own work (heads predicting, training) runs on :attr:`own_device`.
    concurrent_jobs: jobs run at once (jobs writing one store still take turns).
    part_seconds: audio seconds per extraction part (the cancel and resume unit);
        None: the extractor's default.
    callback_secret: the HMAC-SHA256 key that signs callbacks; None: jobs cannot ask
        for callbacks.
    callback_allow: host names, addresses or networks (``10.0.0.0/8``) callbacks may
        go to although they are not public (loopback, private, link-local).
    callback_timeout_s: one callback attempt's whole deadline.
    allowed_hosts: further names the ``Host`` header may give (a proxy's name); on
        loopback without tokens only the loopback names are answered otherwise.
    upload_quota_bytes: all uploads kept at once, in bytes; None: no quota.
    keep_days: uploads and finished jobs' results are removed after this many days;
        None: kept until deleted.
    max_archive_ratio: an archive's unpacked size over its packed size, at most.
    """

    stores: str
    heads: Path
    state: Path
    source_roots: list[str]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tokens: list[str] = field(default_factory=list)
    workers: int = 1
    scheduler: str | None = None
    slurm: SlurmOptions | None = None
    model: str | None = None
    device: str = "auto"
    concurrent_jobs: int = DEFAULT_CONCURRENT_JOBS
    part_seconds: float | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_files: int = DEFAULT_MAX_FILES
    max_body_bytes: int = MAX_BODY_BYTES
    callback_secret: bytes | None = None
    callback_attempts: int = 8
    callback_backoff_s: float = DEFAULT_CALLBACK_BACKOFF_S
    callback_allow: list[str] = field(default_factory=list)
    callback_timeout_s: float = DEFAULT_CALLBACK_TIMEOUT_S
    allowed_hosts: list[str] = field(default_factory=list)
    upload_quota_bytes: int | None = None
    keep_days: float | None = DEFAULT_KEEP_DAYS
    max_archive_ratio: float = DEFAULT_MAX_ARCHIVE_RATIO

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.tokens:
            raise ServiceSetupError(
                f"--host {self.host} is not a loopback address: anyone who can reach it could "
                "submit jobs. Give --token-file FILE (one token per line) to serve beyond "
                "this machine"
            )
        if not self.source_roots:
            raise ServiceSetupError("give at least one --source-root (where audio may come from)")
        roots = []
        for root in self.source_roots:
            if is_url(root):
                roots.append(root.rstrip("/") + "/")
                continue
            resolved = Path(root).expanduser().resolve()
            if not resolved.is_dir():
                raise ServiceSetupError(f"--source-root {root}: not a folder")
            roots.append(str(resolved))
        self.source_roots = roots
        if not is_url(self.stores):
            self.stores = str(Path(self.stores).expanduser().absolute())
            Path(self.stores).mkdir(parents=True, exist_ok=True)
        self.heads = Path(self.heads).expanduser().absolute()
        self.heads.mkdir(parents=True, exist_ok=True)
        if self.concurrent_jobs < 1:
            raise ServiceSetupError("--jobs must be 1 or more")

    @property
    def own_device(self) -> str:
        """The device of the work done in the service's process (heads predicting,
        heads training): the workers' ``device`` where they run here (no ``scheduler``
        nor ``slurm``),
        else ``auto``, a GPU only where this machine has one. A service on a CPU node
        next to GPU workers runs its heads on the CPU."""
        return self.device if self.scheduler is None and self.slurm is None else "auto"

    def allowed_host_names(self) -> set[str] | None:
        """The host names a request's ``Host`` may give (without the port); None: any.

        Without tokens (loopback only), the loopback names, the bound address and
        ``allowed_hosts``: a page on a name that resolves to this machine (DNS
        rebinding) gets nothing. With tokens, any name unless ``allowed_hosts`` are given
        (a request needs a token either way)."""
        if self.tokens and not self.allowed_hosts:
            return None
        names = {_host_of(h) for h in self.allowed_hosts}
        if not self.tokens or is_loopback(self.host):
            names |= set(LOOPBACK_NAMES)
        names.add(self.host.lower().strip("[]"))
        return names

    def public_text(self, text: str) -> str:
        """``text`` with the server's own folders (state, stores, heads) named by role,
        as a client may see it: ``<heads>/ml``, not the path on the server."""
        for folder, role in (
            (str(self.state), "<state>"),
            (str(self.stores), "<stores>"),
            (str(self.heads), "<heads>"),
        ):
            text = text.replace(folder.rstrip("/"), role)
        return text

    @property
    def state_folder(self) -> StateFolder:
        """The state folder's paths (:class:`~service.state.StateFolder`)."""
        from service.state import StateFolder

        return StateFolder(self.state)

    def store_location(self, name: str) -> str:
        """The location of the store named ``name`` under ``stores``."""
        return f"{self.stores.rstrip('/')}/{name}.zarr"

    def score_store_for(self, fingerprint: str) -> str:
        """Where score jobs keep features of one spec (clips keyed by content)."""
        return self.store_location(f"{SCORE_STORE_PREFIX}{fingerprint[:16]}")
