"""Time helpers shared by the parking modules: every instant must be timezone-aware."""

from __future__ import annotations

from datetime import UTC, datetime


def require_aware(name: str, value: datetime) -> None:
    """Reject a naive datetime (``ValueError``) or a non-datetime (``TypeError``)."""
    # Fast path (this runs for every instant of every read): a plain datetime in UTC.
    if value.__class__ is datetime and value.tzinfo is UTC:
        return
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be timezone-aware, got naive {value.isoformat()} "
            "(attach a zone, e.g. datetime(..., tzinfo=ZoneInfo('Asia/Shanghai')))"
        )
