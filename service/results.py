"""A score job's predictions under the state folder (``results/<job>/``):
``predictions.csv`` as ``emi score`` writes it and ``predictions.json`` (rows, and
whether they are partial), each written whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from service.config import ServiceConfig

NAMES = ("predictions.csv", "predictions.json")


def write_predictions(config: ServiceConfig, job_id: str, predictions, *, partial: bool) -> int:
    """Write ``predictions`` (a ``Predictions``) as the job's results; the rows written."""
    from manifests.atomic import atomic_file

    folder = config.state_folder.job_results(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    predictions.write_csv(folder / "predictions.csv")
    rows = predictions.rows()
    with atomic_file(folder / "predictions.json") as temporary:
        temporary.write_text(
            json.dumps({"predictions": rows, "partial": partial}, indent=1, allow_nan=False)
        )
    return len(rows)


def results_file(config: ServiceConfig, job_id: str, name: str) -> Path:
    """One of the job's results files (it may be gone: past the keep time)."""
    assert name in NAMES
    return config.state_folder.job_results(job_id) / name


def remove_results(config: ServiceConfig, job_id: str) -> None:
    shutil.rmtree(config.state_folder.job_results(job_id), ignore_errors=True)
