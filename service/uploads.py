"""Uploads: ``POST /v1/uploads`` (multipart: audio or video files, label CSVs, or one
zip/tar archive), streamed to disk under the state folder, never held whole in memory.

Every limit is checked as the bytes arrive (bytes per file, per request, files per
request); an archive's members are all checked (no absolute paths, no ``..``, no links
or devices, sizes and count within the limits) before anything is extracted, and each
member is written only below the upload's folder. A refused upload leaves nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio

from manifests.records import AUDIO_EXTENSIONS
from service.config import ServiceConfig
from service.errors import RequestError, bad_request, not_found, too_large

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
KEPT = (*AUDIO_EXTENSIONS, ".csv")
MAX_NAME_BYTES = 255  # a file name's bytes on Linux file systems


def kept_bytes(config: ServiceConfig) -> int:
    """Bytes of the uploads kept (as each recorded them)."""
    total = 0
    for record in config.state_folder.kept_uploads():
        try:
            total += int(json.loads(record.read_text()).get("bytes", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return total


class UploadLedger:
    """The bytes of one state folder's uploads, kept and arriving, under one lock: each
    upload reserves its bytes as they arrive (and its archive's as they unpack), and
    an upload becomes kept in the same step its reservation ends, so concurrent
    uploads never share the quota's room twice. The kept total is read from disk
    again after an upload is kept or removed (``forget``)."""

    _ledgers: dict[str, UploadLedger] = {}
    _ledgers_lock = threading.Lock()

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self._kept: int | None = None
        self._arriving: dict[str, int] = {}

    @classmethod
    def of(cls, config: ServiceConfig) -> UploadLedger:
        """The ledger of ``config``'s state folder (one per folder and process)."""
        key = str(config.state.resolve())
        with cls._ledgers_lock:
            if key not in cls._ledgers:
                cls._ledgers[key] = cls(config)
            return cls._ledgers[key]

    def _kept_now(self) -> int:
        if self._kept is None:
            self._kept = kept_bytes(self.config)
        return self._kept

    def take(self, upload_id: str, size: int) -> None:
        """``upload_id`` now holds ``size`` bytes (what arrived or unpacked so far).

        Raises:
            RequestError: 413 past ``--upload-quota-gb``.
        """
        limit = self.config.upload_quota_bytes
        if limit is None:
            return
        with self.lock:
            others = sum(n for k, n in self._arriving.items() if k != upload_id)
            held = self._kept_now() + others
            if held + size > limit:
                raise too_large(
                    f"the service's upload quota ({limit:,} bytes, --upload-quota-gb) "
                    f"is full: {held:,} bytes are kept or arriving. Delete "
                    "uploads you no longer need (DELETE /v1/uploads/{id}) or wait until "
                    "they expire (GET /v1/service: keep_days)"
                )
            self._arriving[upload_id] = size

    def keep(self, upload_id: str, staging: Path, final: Path) -> None:
        """Move a received upload in place; its bytes count as kept from that moment."""
        with self.lock:
            staging.rename(final)
            self._arriving.pop(upload_id, None)
            self._kept = None

    def release(self, upload_id: str) -> None:
        with self.lock:
            self._arriving.pop(upload_id, None)

    def forget(self) -> None:
        """Uploads were removed: read the kept total again when next needed."""
        with self.lock:
            self._kept = None

    def kept(self) -> int:
        with self.lock:
            return self._kept_now()


class _Quota:
    """One upload's reservation in its state folder's :class:`UploadLedger`."""

    def __init__(self, config: ServiceConfig, upload_id: str) -> None:
        self.ledger = UploadLedger.of(config)
        self.upload_id = upload_id

    def take(self, size: int) -> None:
        self.ledger.take(self.upload_id, size)

    def release(self) -> None:
        self.ledger.release(self.upload_id)


def no_room(err: OSError) -> RequestError | None:
    """507 where ``err`` says the disk (or the quota of the file system) is full."""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return RequestError(
            507,
            "insufficient storage",
            "the service's disk is full; nothing of this upload was kept. Try again later, "
            "or delete uploads and jobs you no longer need",
        )
    return None


def _without_paths(err: Exception) -> str:
    """An error's words without the server's paths (an OSError's reason only)."""
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    return f"{type(err).__name__}: {err}"


def _suffix(name: str) -> str:
    lower = name.lower()
    for archive in ARCHIVES:
        if lower.endswith(archive):
            return archive
    return os.path.splitext(lower)[1]


def _limit(what: str, option: str, limit: int) -> RequestError:
    return too_large(f"{what} is over the limit of {limit:,} (the service's {option})")


def check_member_name(name: str, archive: str) -> PurePosixPath:
    """A member's relative path, refused where it is absolute or climbs out."""
    if not name or "\x00" in name or "\\" in name:
        raise bad_request(f"{archive}: member {name!r} has an unusable name")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise bad_request(f"{archive}: member {name!r} is an absolute path; nothing was extracted")
    if any(part == ".." for part in path.parts):
        raise bad_request(f"{archive}: member {name!r} climbs out with '..'; nothing was extracted")
    return path


@dataclass
class _Part:
    name: str
    handle: object
    path: Path
    size: int = 0


@dataclass
class UploadWriter:
    """Receives one multipart body into ``folder`` (see :func:`receive_upload`)."""

    config: ServiceConfig
    folder: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files that are not audio, CSV, archives
    total: int = 0
    _part: _Part | None = None
    _header_field: bytes = b""
    _header_value: bytes = b""
    _headers: dict = field(default_factory=dict)
    error: RequestError | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers = {}

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        raw = options.get(b"filename")
        if raw is None:
            raise bad_request("every multipart field must be a file (filename=...)")
        name = raw.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        if not name or name.startswith(".") or "\x00" in name:
            raise bad_request(f"file name {raw!r} is not usable; give a plain file name")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise bad_request(f"a file name is over {MAX_NAME_BYTES} bytes; give a shorter name")
        if _suffix(name) not in (*KEPT, *ARCHIVES):  # a read-me, notes: left out, as a
            self.skipped.append(name)  # folder's listing leaves them out
            self._part = _Part(name, None, self.folder / name)
            return
        if len(self.files) + 1 > self.config.max_files:
            raise _limit("the number of files", "--upload-max-files", self.config.max_files)
        path = self.folder / name
        if path.exists():
            raise bad_request(f"{name}: two files of this name in one upload")
        self._part = _Part(name, open(path, "wb"), path)  # noqa: SIM115 (closed at part end)
        self.files.append(path)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        self.total += end - start
        if part.size > self.config.max_file_bytes:
            raise _limit(
                f"{part.name} ({part.size:,}+ bytes)",
                "--upload-max-file-mb",
                self.config.max_file_bytes,
            )
        if self.total > self.config.max_request_bytes:
            raise _limit(
                "the upload's bytes", "--upload-max-request-mb", self.config.max_request_bytes
            )
        if part.handle is not None:
            part.handle.write(data[start:end])

    def _end(self) -> None:
        if self._part is not None:
            if self._part.handle is not None:
                self._part.handle.close()
            self._part = None

    def close(self) -> None:
        self._end()


async def receive_upload(
    config: ServiceConfig, content_type: str, length: int | None, body: AsyncIterator[bytes]
) -> dict:
    """Stream a multipart body into a new upload; returns its description.

    Raises:
        RequestError: 400 for a malformed body or a refused archive, 413 over a limit.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise RequestError(
            415, "unsupported media type", "send multipart/form-data (curl -F file=@a.wav)"
        )
    if length is not None and length > config.max_request_bytes:
        raise _limit(
            f"the upload ({length:,} bytes)", "--upload-max-request-mb", config.max_request_bytes
        )
    upload_id = "upload-" + uuid.uuid4().hex[:20]
    staging = config.state_folder.upload_staging(upload_id)
    files = staging / "files"
    writer = UploadWriter(config, files)
    received = 0
    quota = _Quota(config, upload_id)
    try:
        files.mkdir(parents=True)
        parser = MultipartParser(boundary, writer.callbacks())
        async for chunk in body:
            received += len(chunk)  # every byte counts, inside file parts or not
            if received > config.max_request_bytes:
                raise _limit(
                    "the upload's bytes", "--upload-max-request-mb", config.max_request_bytes
                )
            quota.take(received)
            await anyio.to_thread.run_sync(parser.write, chunk)  # disk writes off the loop
        parser.finalize()
        writer.close()
        if not writer.files:
            skipped = f" (left out: {', '.join(writer.skipped[:10])})" if writer.skipped else ""
            raise bad_request(
                f"the upload holds no audio, video, CSV or archive file ({', '.join(KEPT)}, "
                f"{', '.join(ARCHIVES)}){skipped}"
            )
        archives = [p for p in writer.files if _suffix(p.name) in ARCHIVES]
        if archives:
            if len(writer.files) != 1:
                raise bad_request("send one archive alone, or files without an archive")
            count, size = await anyio.to_thread.run_sync(
                unpack_archive, archives[0], files, config, quota
            )
            archives[0].unlink()
        else:
            count, size = len(writer.files), writer.total
        description = {
            "id": upload_id,
            "files": count,
            "bytes": size,
            "created_at": time.time(),
            "skipped": writer.skipped,
            "names": _first_names(files),
        }
        (staging / "upload.json").write_text(json.dumps(description))
        quota.ledger.keep(upload_id, staging, config.state_folder.upload(upload_id))
        return description
    except RequestError:
        raise
    except OSError as err:
        full = no_room(err)
        if full is not None:
            raise full from None
        raise bad_request(f"the upload could not be written ({_without_paths(err)})") from None
    except Exception as err:
        raise bad_request(f"malformed multipart body ({_without_paths(err)})") from None
    finally:  # whatever ended it (a refusal, a disconnect): nothing half-written stays
        writer.close()
        quota.release()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def sweep_partial_uploads(config: ServiceConfig) -> list[str]:
    """Remove what uploads cut off by a killed service left (at start)."""
    swept = []
    for leftover in config.state_folder.staged_uploads():
        shutil.rmtree(leftover, ignore_errors=True)
        swept.append(leftover.name)
    return swept


def unpack_archive(
    archive: Path, into: Path, config: ServiceConfig, quota: _Quota | None = None
) -> tuple[int, int]:
    """Check every member of a zip or tar archive, then extract the audio, video and CSV
    members below ``into``; returns (files, bytes) extracted.

    The members' sizes, as stated and as written, stay within the per-file and
    per-request limits, ``--upload-max-ratio`` times the archive's own size (a
    compression bomb is refused) and the upload quota."""
    name = archive.name
    ceiling = _Ceiling(config, archive.stat().st_size, quota)
    if _suffix(name) == ".zip":
        members = _zip_members(archive, config, ceiling)
        opener = zipfile.ZipFile(archive)
    else:
        members = _tar_members(archive, config, ceiling)
        opener = tarfile.open(archive, "r:*")  # noqa: SIM115 (the with below closes it)
    count = size = 0
    root = into.resolve()
    with opener as handle:
        for member, path in members:
            if _suffix(path.name) not in KEPT:
                continue  # folders, read-me files and the like
            target = (into / path).resolve()
            if not str(target).startswith(str(root) + os.sep):
                raise bad_request(f"{name}: member {path} would land outside the upload")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = (
                handle.open(member)
                if isinstance(handle, zipfile.ZipFile)
                else (handle.extractfile(member))
            )
            written = 0
            with source, open(target, "xb") as out:
                while chunk := source.read(2**20):
                    written += len(chunk)
                    if written > config.max_file_bytes:
                        raise _limit(
                            f"{name}: member {path}", "--upload-max-file-mb", config.max_file_bytes
                        )
                    ceiling.check(size + written)
                    out.write(chunk)
            count += 1
            size += written
    if count == 0:
        raise bad_request(f"{name}: holds no audio, video or CSV file")
    return count, size


class _Ceiling:
    """What an archive may unpack to: the request limit, ``--upload-max-ratio`` times
    its packed size, and what the upload quota leaves."""

    def __init__(self, config: ServiceConfig, packed: int, quota: _Quota | None) -> None:
        self.limits = [
            (config.max_request_bytes, "--upload-max-request-mb"),
            (int(config.max_archive_ratio * max(packed, 1)), "--upload-max-ratio"),
        ]
        self.quota = quota

    def check(self, unpacked: int, name: str = "the archive") -> None:
        for limit, option in self.limits:
            if unpacked > limit:
                what = f"{name} unpacks to {unpacked:,}+ bytes"
                if option == "--upload-max-ratio":
                    what += " (a compression ratio past the service's limit)"
                raise _limit(what, option, limit)
        if self.quota is not None:
            self.quota.take(unpacked)


def _check_totals(
    name: str, sizes: list[int], config: ServiceConfig, ceiling: _Ceiling, *, last_only=False
) -> None:
    """The members' stated sizes within the limits (their count, folders included, is
    checked as they are listed); ``last_only``: the newest member's size and the sum."""
    big = [s for s in (sizes[-1:] if last_only else sizes) if s > config.max_file_bytes]
    if big:
        raise _limit(
            f"{name}: a member of {big[0]:,} bytes", "--upload-max-file-mb", config.max_file_bytes
        )
    ceiling.check(sum(sizes), name)


def _zip_members(archive: Path, config: ServiceConfig, ceiling: _Ceiling) -> list:
    entries = _zip_entry_count(archive)
    if entries is not None and entries > config.max_files:
        raise _limit(f"{archive.name}: {entries:,} members", "--upload-max-files", config.max_files)
    try:
        with zipfile.ZipFile(archive) as handle:
            infos = handle.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise bad_request(f"{archive.name}: not a readable zip archive ({err})") from err
    if len(infos) > config.max_files:  # every entry counts, folders too
        raise _limit(
            f"{archive.name}: {len(infos):,} members", "--upload-max-files", config.max_files
        )
    members, sizes = [], []
    for info in infos:
        path = check_member_name(info.filename, archive.name)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise bad_request(f"{archive.name}: member {info.filename!r} is a link; refused")
        if info.is_dir():
            continue
        members.append((info, path))
        sizes.append(info.file_size)
    _check_totals(archive.name, sizes, config, ceiling)
    return members


def _zip_entry_count(archive: Path) -> int | None:
    """The entry count the zip's end record states, read before its directory is
    loaded (None where there is no plain end record: zipfile then says what is wrong)."""
    import struct

    size = archive.stat().st_size
    with open(archive, "rb") as handle:
        handle.seek(max(0, size - 65_557))  # the end record and its longest comment
        tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    total = struct.unpack("<H", tail[at + 10 : at + 12])[0]
    return None if total == 0xFFFF else total  # 0xFFFF: a zip64 count, checked after


def _tar_members(archive: Path, config: ServiceConfig, ceiling: _Ceiling) -> list:
    members, sizes, seen = [], [], 0
    try:
        with tarfile.open(archive, "r:*") as handle:
            for info in handle:  # one at a time: a huge listing is refused, not loaded
                seen += 1
                if seen > config.max_files:  # every entry counts, folders too
                    raise _limit(
                        f"{archive.name}: more than {config.max_files:,} members",
                        "--upload-max-files",
                        config.max_files,
                    )
                path = check_member_name(info.name, archive.name)
                if info.isdir():
                    continue
                if not info.isreg():
                    what = "a link" if info.issym() or info.islnk() else "not a regular file"
                    raise bad_request(f"{archive.name}: member {info.name!r} is {what}; refused")
                members.append((info, path))
                sizes.append(info.size)
                # its stated size checked now, before the stream is read past it
                _check_totals(archive.name, sizes, config, ceiling, last_only=True)
                handle.members = []  # keep no listing in memory
    except (tarfile.TarError, OSError, EOFError) as err:
        raise bad_request(f"{archive.name}: not a readable tar archive ({err})") from err
    _check_totals(archive.name, sizes, config, ceiling)
    return members


def delete_upload(config: ServiceConfig, upload_id: str) -> None:
    from service.sources import upload_files

    folder = upload_files(config, upload_id).parent
    shutil.rmtree(folder)
    UploadLedger.of(config).forget()


NAMES_KEPT = 20  # an upload's file names listed with it (the page names a job by them)


def _first_names(files: Path) -> list[str]:
    """The first files of an upload by name (paths below its folder, sorted)."""
    found = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    return found[:NAMES_KEPT]


def describe_upload(config, upload_id: str) -> dict:
    """``GET /v1/uploads/{id}``: what ``POST /v1/uploads`` answered for it.

    Raises:
        RequestError: 404 where no such upload is kept.
    """
    from service.sources import upload_files

    folder = upload_files(config, upload_id).parent
    try:
        return json.loads((folder / "upload.json").read_text())
    except (OSError, ValueError):
        raise not_found(
            f"upload {upload_id!r} not found; POST files to /v1/uploads first"
        ) from None
