"""Where a store lives: raw object access through fsspec, local paths and URLs alike.

The zarr API reads and writes arrays; this module answers the questions zarr does not:
is anything at this path already (and is it ours), and it creates objects exclusively
(``O_EXCL`` locally, ``If-None-Match: *`` on S3) for the writer lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from dataclasses import dataclass, field

import fsspec

from manifests.sources import is_url


@dataclass(frozen=True)
class StoreLocation:
    """A store's root: ``url`` as the user gave it, resolved to a filesystem and path."""

    url: str
    storage_options: dict = field(default_factory=dict)

    @classmethod
    def of(cls, location: str | os.PathLike, storage_options: dict | None = None):
        url = str(location)
        if not is_url(url):
            url = os.path.abspath(url)
        return cls(url, dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return not is_url(self.url)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        options = {} if self.is_local else {"use_listings_cache": False, **self.storage_options}
        fs, _ = fsspec.core.url_to_fs(self.url, **options)
        return fs

    @property
    def root(self) -> str:
        return self.fs._strip_protocol(self.url).rstrip("/")

    def key(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def kind(self) -> str:
        """``absent``, ``file`` or ``directory`` (an object prefix counts as a directory)."""
        fs = self.fs
        if self.is_local:
            if os.path.isdir(self.root):
                return "directory"
            return "file" if os.path.lexists(self.root) else "absent"
        if fs.isfile(self.root):
            return "file"
        return "directory" if self.entries() else "absent"

    def entries(self, relative: str = "") -> list[str]:
        """Names directly below ``relative`` (empty when it does not exist)."""
        fs = self.fs
        try:
            listed = fs.ls(self.key(relative), detail=False)
        except FileNotFoundError:
            return []
        base = self.key(relative).rstrip("/") + "/"
        return sorted({p.rstrip("/")[len(base) :].split("/")[0] for p in listed} - {""})

    def read(self, relative: str) -> bytes:
        return self.fs.cat_file(self.key(relative))

    def write(self, relative: str, data: bytes) -> None:
        """Replace an object (atomically: a local write goes through a renamed temporary,
        removed again when the write fails, e.g. on a full disk)."""
        path = self.key(relative)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.{os.getpid()}{PARTIAL_SUFFIX}"
            try:
                _write_file(temporary, data)
                os.replace(temporary, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
            return
        self.fs.pipe_file(path, data)

    def create(self, relative: str, data: bytes) -> bool:
        """Write an object only if none exists there; False if one already did.

        Never leaves a partial object: locally the bytes go to a temporary first and are
        linked into place (exclusive, like ``O_EXCL``), so a full disk leaves nothing
        where the object would be; on S3 a conditional put is atomic."""
        path = self.key(relative)
        if self.is_local:
            folder = os.path.dirname(path)
            made = not os.path.isdir(folder)
            os.makedirs(folder, exist_ok=True)
            temporary = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
            try:
                _write_file(temporary, data)
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    return False
                except OSError as err:  # a file system without hard links
                    if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.ENOSYS):
                        raise
                    return _create_exclusive(path, data)
                return True
            except BaseException:
                if made:  # a folder made for this object alone stays only with it
                    with contextlib.suppress(OSError):
                        os.unlink(temporary)
                        os.rmdir(folder)
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        try:
            self.fs.pipe_file(path, data, mode="create")
        except (FileExistsError, OSError) as err:
            if _precondition_failed(err):
                return False
            raise
        return True

    def leftovers(self, relative: str = "") -> list[str]:
        """Temporaries of interrupted writes directly below ``relative`` (names)."""
        return [n for n in self.entries(relative) if n.endswith(PARTIAL_SUFFIX)]

    def delete(self, relative: str, *, recursive: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.key(relative), recursive=recursive)


PARTIAL_SUFFIX = ".partial"  # a local write's temporary (``zarr.json.<pid>.partial``)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _create_exclusive(path: str, data: bytes) -> bool:
    """``O_EXCL`` create; a failed write removes the file it began."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return True


def group_node(attributes: dict) -> bytes:
    """The ``zarr.json`` of a Zarr v3 group with ``attributes`` (for objects emi writes
    itself: the root, ``parts/`` and the lock's generations)."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}).encode()


def _precondition_failed(err: BaseException) -> bool:
    """An S3 conditional write that lost (HTTP 412 or 409), however the client wraps it."""
    if isinstance(err, FileExistsError):
        return True
    text = f"{err!r} {err.__cause__!r}"
    return any(s in text for s in ("PreconditionFailed", "412", "ConditionalRequestConflict"))
