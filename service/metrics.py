"""``GET /metrics``: Prometheus text (prometheus-client) about jobs and clips, the
process (resident memory, CPU, open files) and the HTTP requests it answers (count and
latency by route template and status)."""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from service.jobs import STATE_NAMES, Job, JobTable

# no ``*_created`` families beside each counter and histogram: scrapers (and
# dashboards) read them as series of their own
disable_created_metrics()


class _JobCounts:
    """Jobs by kind and state, and the queue's length, read from the table on scrape."""

    def __init__(self, table: JobTable) -> None:
        self.table = table

    def collect(self):
        counts = self.table.counts()
        jobs = GaugeMetricFamily(
            "emi_jobs", "Jobs in the table by kind and state", labels=["kind", "state"]
        )
        for kind in self.table.kinds.names:
            for state in STATE_NAMES:
                jobs.add_metric([kind, state], counts.get((kind, state), 0))
        yield jobs
        queued = sum(n for (_, state), n in counts.items() if state == "queued")
        yield GaugeMetricFamily("emi_queue_length", "Jobs waiting to run", value=queued)


# sub-second jobs (a score job of stored clips) resolve from 50 ms; a day at the top
JOB_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)


class ServiceMetrics:
    def __init__(self, table: JobTable) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_JobCounts(table))
        self.transitions = Counter(
            "emi_job_transitions",
            "Jobs that started or ended, by kind and state",
            ["kind", "state"],
            registry=self.registry,
        )
        self.clip_outcomes = Counter(
            "emi_clips",
            "Clips by outcome: extracted, reused (already stored) or failed",
            ["outcome"],
            registry=self.registry,
        )
        self.audio = Counter("emi_audio_seconds", "Audio seconds extracted", registry=self.registry)
        self.durations = Histogram(
            "emi_job_duration_seconds",
            "Wall time of jobs that ended, by kind and state",
            ["kind", "state"],
            buckets=JOB_BUCKETS_S,
            registry=self.registry,
        )
        self.requests = Histogram(
            "emi_http_request_duration_seconds",
            "HTTP requests answered, by method, route template and status: their count "
            "(_count) and time from the request's arrival to the answer's last byte",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS_S,
            registry=self.registry,
        )
        # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds...
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

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


class RequestMetrics:
    """ASGI middleware outside everything else (the guard's refusals count too): each
    HTTP request observed in ``metrics.requests`` by method, route template
    (``/v1/jobs/{job_id}``, never the path itself; ``unmatched`` for no route) and
    status."""

    def __init__(self, app, routes: list, metrics: ServiceMetrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}  # what an app that raised before answering gave

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(
                scope.get("method", ""), self._template(scope), str(status["code"])
            ).observe(time.perf_counter() - started)

    def _template(self, scope) -> str:
        route = scope.get("route")
        if route is None:  # refused before routing: the route it was meant for
            from starlette.routing import Match

            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"
