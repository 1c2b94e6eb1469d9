"""The kinds of job the service runs, one module each (:class:`JobKind` records) and
their registry :data:`KINDS`. A new kind is a module with its request, progress and
result models, its ``check`` and ``run``, and one more entry below (the maintainers'
page, "Adding a job kind")."""

from service.kinds.kind import JobKind, JobRequestBase, KindRegistry


def default_kinds() -> KindRegistry:
    """score, extract and train."""
    from service.kinds import extract, score, train

    return KindRegistry([score.KIND, extract.KIND, train.KIND])


KINDS = default_kinds()

__all__ = ["KINDS", "JobKind", "JobRequestBase", "KindRegistry", "default_kinds"]
