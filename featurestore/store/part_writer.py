"""Writing one part (on a worker): its arrays while the clips are computed, its
marker last; the driver commits the record :meth:`PartWriter.finish` returns."""

from __future__ import annotations

import asyncio
import os
import socket

import numpy as np
import zarr
import zarr.storage
from zarr.core.sync import sync as zarr_sync

from featurestore.integrity import digest_of, metadata_digest
from featurestore.spec import FeatureSpec, as_spec, fingerprint
from featurestore.store.clip import ClipFeatures, StoredClip
from featurestore.store.index import PartMarker, PartRecord, utc_now
from featurestore.store.layout import CHUNK_BYTES, PARTS
from featurestore.store.schema import StoredArray, array_options, schema, widths


async def _write_chunks(writes: list[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write ``(array, first row, rows)`` blocks one chunk per call, all concurrently:
    a call of exactly one chunk's shape is compressed from the caller's buffer (a larger
    call copies each chunk into a new buffer first), and chunks compress in parallel."""
    calls = []
    for arr, start, block in writes:
        step = arr.chunks[0]
        for k in range(0, len(block), step):
            piece = block[k : k + step]
            selection = (slice(start + k, start + k + len(piece)), slice(None))
            calls.append(arr._async_array.setitem(selection, piece))
    await asyncio.gather(*calls)


class PartWriter:
    """Writes one part while its clips are still being computed; the marker goes last.

    Clips arrive in rounds (:meth:`append`). The per-frame arrays grow in whole chunks
    (about :data:`CHUNK_BYTES` each, so a chunk is compressed and written once, never
    rewritten); less than one chunk per array waits in memory. The per-clip arrays
    are small and written by :meth:`finish`, which returns the commit record: clip ids,
    frame counts, sha256, durations, and the XXH3 digest of every array's content (per
    clip for the per-frame arrays).
    """

    def __init__(
        self,
        store: zarr.storage.StoreLike,
        name: str,
        spec: FeatureSpec | dict,
        parts_path: str = PARTS,
    ):
        self.spec = as_spec(spec)
        self._parts_path = parts_path
        self._widths = widths(self.spec)
        self._schema = {a.name: a for a in schema(self.spec)}
        self._store, self._name = store, name
        self._part = None  # created by the first append (on the writing thread)
        self._clips: list[StoredClip] = []
        self._per_clip: dict[str, list[np.ndarray]] = {
            a.name: [] for a in self._schema.values() if a.axis == "clip" and a.width
        }
        self._frames: list[int] = []
        frame_arrays = [a.name for a in self._schema.values() if a.axis == "frame"]
        self._clip_digests: dict[str, list[str]] = {key: [] for key in frame_arrays}
        self._arrays = {}
        self._pending: dict[str, list[np.ndarray]] = {key: [] for key in frame_arrays}
        self._metadata: dict[str, str] = {}  # array -> digest of its final metadata

    def _open(self) -> None:
        """Create the part's group, marked incomplete, and its per-frame arrays."""
        if self._part is not None:
            return
        self._part = zarr.create_group(
            self._store, path=f"{self._parts_path}/{self._name}", overwrite=True, zarr_format=3
        )
        self._part.attrs.update(PartMarker(complete=False).to_attributes())
        for a in self._schema.values():
            if a.axis != "frame":
                continue
            width = self._widths[a.width]
            rows = max(64, CHUNK_BYTES // (width * np.dtype(a.dtype).itemsize))
            self._arrays[a.name] = self._part.create_array(
                a.name, **array_options(a, (0, width), (rows, width))
            )

    async def _write_small(self, data: dict[str, np.ndarray]) -> None:
        """Create and fill the per-clip arrays concurrently (one round trip, not nine)."""

        async def one(a: StoredArray) -> None:
            values = data[a.name]
            chunks = tuple(max(1, n) for n in values.shape)
            arr = await self._part._async_group.create_array(
                a.name, **array_options(a, values.shape, chunks)
            )
            self._metadata[a.name] = metadata_digest(arr.metadata)
            if values.size:
                await arr.setitem(Ellipsis, values)

        await asyncio.gather(*(one(a) for a in self._schema.values() if a.axis != "frame"))

    def append(self, clips: list[StoredClip], features: list[ClipFeatures]) -> None:
        """Add clips (in store order) with their features."""
        self._open()
        for clip, feature in zip(clips, features, strict=True):
            self._clips.append(clip)
            self._frames.append(feature.frames)
            for key, pending in self._pending.items():
                values = np.asarray(feature.array(key), dtype=self._schema[key].dtype)
                self._clip_digests[key].append(digest_of(values))
                pending.append(values)
            for key, rows in self._per_clip.items():
                rows.append(np.asarray(feature.array(key), dtype=self._schema[key].dtype))
        self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        """Write each per-frame array's pending rows: whole chunks only, unless ``final``."""
        writes = []
        for key, arr in self._arrays.items():
            pending = self._pending[key]
            count = sum(len(p) for p in pending)
            rows = count if final else count // arr.chunks[0] * arr.chunks[0]
            if rows == 0:
                continue
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            start = arr.shape[0]
            arr.resize((start + rows, arr.shape[1]))
            writes.append((arr, start, block[:rows]))
            self._pending[key] = [block[rows:]] if rows < count else []
        if writes:
            zarr_sync(_write_chunks(writes))

    def finish(self) -> PartRecord:
        """Write what remains and the part's marker; return the commit record."""
        self._open()
        self._flush(final=True)
        frames = np.array(self._frames, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(frames)]).astype(np.int64)
        clips = self._clips
        data = {
            "clip_id": np.array([c.clip_id for c in clips], dtype=object),
            "source_path": np.array([c.source_path for c in clips], dtype=object),
            "sha256": np.array([c.sha256 for c in clips], dtype=object),
            "duration_s": np.array([c.duration_s for c in clips], dtype=np.float64),
            "frames": frames,
            "offsets": offsets,
        }
        for key, rows in self._per_clip.items():
            a = self._schema[key]
            data[key] = np.stack(rows) if rows else np.zeros((0, self._widths[a.width]), a.dtype)
        zarr_sync(self._write_small(data))
        for key, arr in self._arrays.items():
            self._metadata[key] = metadata_digest(arr.metadata)
        record = PartRecord(
            clips=len(clips),
            frames=int(offsets[-1]),
            clip_id=tuple(c.clip_id for c in clips),
            clip_frames=tuple(int(f) for f in frames),
            sha256=tuple(c.sha256 for c in clips),
            duration_s=tuple(float(c.duration_s) for c in clips),
            digests={name: digest_of(values) for name, values in data.items()},
            clip_digests={k: tuple(v) for k, v in self._clip_digests.items()},
            # dtype, shape, chunks, codecs and fill value of every array
            metadata_digests={k: self._metadata[k] for k in self._schema},
            fingerprint=fingerprint(self.spec),
            written_at=utc_now(),
            written_by=f"{socket.gethostname()}:{os.getpid()}",
        )
        # Written last; the spec makes the part self-describing (a damaged root can be
        # rebuilt from its parts).
        marker = PartMarker(complete=True, record=record, spec=self.spec.to_dict())
        self._part.attrs.update(marker.to_attributes())
        return record


def write_part(
    store: zarr.storage.StoreLike,
    name: str,
    spec: FeatureSpec | dict,
    clips: list[StoredClip],
    features: list[ClipFeatures],
    parts_path: str = PARTS,
) -> PartRecord:
    """Write one part's arrays, then its marker, in one go; returns its commit record."""
    writer = PartWriter(store, name, spec, parts_path)
    writer.append(clips, features)
    return writer.finish()
