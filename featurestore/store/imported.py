"""Features computed elsewhere (another tool's, or synthetic ones for tests and
benchmarks) written into a store as committed parts, under the writer's lock."""

from __future__ import annotations

import uuid

from featurestore.store.clip import ClipFeatures, StoredClip
from featurestore.store.layout import open_zarr_store, part_name
from featurestore.store.part_writer import write_part
from featurestore.store.writer import StoreWriter


def commit_features(
    writer: StoreWriter, clips: list[StoredClip], features: list[ClipFeatures]
) -> str:
    """Write ``features`` of ``clips`` as one part and commit it; returns its name."""
    run_id = writer.lock.run_id if writer.lock is not None else uuid.uuid4().hex[:8]
    name = part_name(writer.next_part_number(), run_id)
    zarr_store = open_zarr_store(
        writer.location.url, mode="a", storage_options=writer.location.storage_options
    )
    record = write_part(
        zarr_store, name, writer.record.spec, clips, features, parts_path=writer.parts_path
    )
    writer.commit(name, record, [])
    return name
