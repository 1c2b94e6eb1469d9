"""Spreading a grid of heads over a dask cluster: one task per head.

Each task opens the store itself (so the store must be reachable from the workers: a
shared path or an object-store URL) and writes its head folder under ``out`` (shared
storage too). Within a task the features are loaded once for that head; on one
machine, ``train_heads`` without a cluster shares one load between all heads instead.
"""

from __future__ import annotations

from pathlib import Path

from featurestore.cluster import dask_client
from featurestore.store import FeatureStore
from manifests.labels import LabelTable
from models.head_files import check_head_destination
from models.training import HeadPlan, TrainedHead, train_heads


def _train_task(
    store: str,
    train_table: LabelTable,
    val_table: LabelTable,
    plan: HeadPlan,
    out: str,
    device: str,
    budget_bytes: int,
    skip_missing: bool,
    overwrite: bool,
    feature_set: str | None = None,
) -> TrainedHead:
    [result] = train_heads(
        FeatureStore.open(store, feature_set=feature_set),
        train_table,
        val_table,
        [plan],
        out,
        device=device,
        budget_bytes=budget_bytes,
        skip_missing=skip_missing,
        overwrite=overwrite,
    )
    return result


def train_heads_on_cluster(
    store: str,
    train_table: LabelTable,
    val_table: LabelTable,
    plans: list[HeadPlan],
    out: str | Path,
    *,
    scheduler: str,
    device: str = "auto",
    budget_bytes: int,
    skip_missing: bool = False,
    overwrite: bool = False,
    feature_set: str | None = None,
) -> list[TrainedHead]:
    """Train each plan as a task on the cluster at ``scheduler`` (on the store's
    ``feature_set``, None: its default set); results in plan order."""
    for plan in plans:  # before any work: never write over something that is not a head
        check_head_destination(Path(out) / plan.name, overwrite=overwrite)
    with dask_client(workers=1, scheduler=scheduler, quiet=True) as client:
        gpu = any(
            w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values()
        )
        futures = [
            client.submit(
                _train_task,
                store,
                train_table,
                val_table,
                plan,
                str(out),
                device,
                budget_bytes,
                skip_missing,
                overwrite,
                feature_set,
                pure=False,
                resources={"GPU": 1} if gpu else None,
                key=f"emi-train-{plan.name}",
            )
            for plan in plans
        ]
        return client.gather(futures)
