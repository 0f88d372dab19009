"""Timestamps as Kubernetes writes them (RFC 3339, UTC, whole seconds) and reading them back."""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(t: datetime) -> str:
    """UTC timestamp as Kubernetes writes it."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp (None when absent or malformed)."""
    if not s:
        return None
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
