"""``GET /metrics``: Prometheus text (prometheus-client) about jobs and clips."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from service.jobs import KINDS, STATES, Job, JobTable

# no ``*_created`` families beside each counter and histogram: scrapers (and
# dashboards) read them as series of their own
disable_created_metrics()


class _JobCounts:
    """Jobs by kind and state, and the queue's length, read from the table on scrape."""

    def __init__(self, table: JobTable) -> None:
        self.table = table

    def collect(self):
        counts = self.table.counts()
        jobs = GaugeMetricFamily("emi_jobs", "Jobs in the table by kind and state",
                                 labels=["kind", "state"])  # fmt: skip
        for kind in KINDS:
            for state in STATES:
                jobs.add_metric([kind, state], counts.get((kind, state), 0))
        yield jobs
        queued = sum(n for (_, state), n in counts.items() if state == "queued")
        yield GaugeMetricFamily("emi_queue_length", "Jobs waiting to run", value=queued)


class ServiceMetrics:
    def __init__(self, table: JobTable) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_JobCounts(table))
        self.transitions = Counter(
            "emi_job_transitions", "Jobs that started or ended, by kind and state",
            ["kind", "state"], registry=self.registry,
        )  # fmt: skip
        self.clip_outcomes = Counter(
            "emi_clips", "Clips by outcome: extracted, reused (already stored) or failed",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.audio = Counter("emi_audio_seconds", "Audio seconds extracted", registry=self.registry)
        self.durations = Histogram(
            "emi_job_duration_seconds", "Wall time of jobs that ended, by kind and state",
            ["kind", "state"],
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=self.registry,
        )  # fmt: skip

    def started(self, job: Job) -> None:
        self.transitions.labels(job.kind, "running").inc()

    def ended(self, kind: str, state: str) -> None:
        self.transitions.labels(kind, state).inc()

    def duration(self, kind: str, state: str, seconds: float) -> None:
        self.durations.labels(kind, state).observe(seconds)

    def clips(self, audio_seconds: float) -> None:
        if audio_seconds > 0:
            self.audio.inc(audio_seconds)

    def outcomes(self, extracted: int, reused: int, failed: int) -> None:
        self.clip_outcomes.labels("extracted").inc(extracted)
        self.clip_outcomes.labels("reused").inc(reused)
        self.clip_outcomes.labels("failed").inc(failed)

    def text(self) -> bytes:
        return generate_latest(self.registry)
