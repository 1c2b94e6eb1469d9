"""Expiry: uploads and finished jobs' results older than ``--keep-days`` are removed
(the job rows stay, saying their results are gone); an upload a queued or running job
names is kept until that job ends."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

from service.config import ServiceConfig
from service.jobs import JobTable

log = logging.getLogger("emi.service")
DAY_S = 86_400.0
MAX_SWEEP_INTERVAL_S = 3600.0


def sweep_expired(config: ServiceConfig, table: JobTable, now: float | None = None) -> list[str]:
    """Remove what is past ``config.keep_days`` at ``now``; returns what was removed
    (upload ids and ``results/<job id>``)."""
    if config.keep_days is None:
        return []
    now = time.time() if now is None else now
    cutoff = now - config.keep_days * DAY_S
    removed = []
    in_use = table.sources_in_use()
    for record in config.state_folder.kept_uploads():
        folder = record.parent
        try:
            created = float(json.loads(record.read_text())["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            created = record.stat().st_mtime
        if created < cutoff and folder.name not in in_use:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        from service.uploads import UploadLedger

        UploadLedger.of(config).forget()
    for job_id in table.finished_before(cutoff):
        results = config.state_folder.job_results(job_id)
        if results.is_dir():
            shutil.rmtree(results, ignore_errors=True)
            removed.append(f"results/{job_id}")
    return removed


class Sweeper:
    """A thread running :func:`sweep_expired` every so often (a tenth of the keep time,
    at most hourly)."""

    def __init__(self, config: ServiceConfig, table: JobTable) -> None:
        self.config = config
        self.table = table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="emi-expiry", daemon=True)

    def start(self) -> None:
        if self.config.keep_days is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = min(MAX_SWEEP_INTERVAL_S, max(1.0, self.config.keep_days * DAY_S / 10))
        while True:
            try:
                for gone in sweep_expired(self.config, self.table):
                    log.info("removed %s: older than --keep-days %g", gone, self.config.keep_days)
            except Exception:  # noqa: BLE001 - tried again at the next sweep
                log.exception("expiry sweep failed")
            if self._stop.wait(interval):
                return
