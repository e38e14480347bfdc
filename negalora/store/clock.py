"""The one timestamp format of every row: UTC, ISO 8601, milliseconds."""

from datetime import UTC, datetime


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
