"""Small typed records shared by the store and its users, each with a JSON round-trip."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


class FieldAccess:
    """Read access by key as well as by attribute (``info["frames"]``), for code and
    notebooks written against the dicts these records replaced."""

    def __getitem__(self, key: str):
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClipFailure(FieldAccess):
    """A clip that could not be stored, and why (``at``: when it was recorded)."""

    clip_id: str
    path: str
    reason: str
    at: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ClipFailure:
        return cls(
            clip_id=str(data["clip_id"]),
            path=str(data.get("path", "")),
            reason=str(data.get("reason", "")),
            at=data.get("at"),
        )
