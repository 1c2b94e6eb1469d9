"""The routes of ``emi serve``, one router per resource: jobs, uploads, the registry
(heads, stores, sources, the service's limits), operations (probes, metrics) and the
page."""
