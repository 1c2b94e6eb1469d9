"""What composes the extractor with the heads: scoring a folder, the demo, and the job
service (``emi serve``) with its HTTP app and client.

``featurestore`` extracts, ``models`` reads stores; this package is the one place that
runs both. Public API (imported on first use):

    from service import score_folder, run_demo, ServiceClient
    score_folder("new_audio/", ["heads/compact"], output="scores.csv")
"""

from __future__ import annotations

from featurestore.exports import lazy_exports

_EXPORTS = {
    "score_folder": "service.score",
    "ScoreResult": "service.score",
    "run_demo": "service.demo",
    "DemoResult": "service.demo",
    "ServiceClient": "service.client",
    "ServiceError": "service.client",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
