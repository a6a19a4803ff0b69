"""Timestamps as the States Language writes them: RFC 3339 with an uppercase `T` and `Z`
(or a numeric offset), e.g. `2016-03-14T01:59:00Z` or `2016-03-14T01:59:00.123+02:00`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
)


def parse_timestamp(text: object) -> float | None:
    """POSIX seconds for an RFC 3339 timestamp, or None if `text` is not one."""
    if not isinstance(text, str):
        return None
    match = _RFC3339.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7)
    zone = match.group(8)
    if zone == "Z":
        tz = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=tz)
    except ValueError:
        return None
    seconds = moment.timestamp()
    if fraction:
        seconds += float("0" + fraction)
    return seconds


def format_timestamp(seconds: float) -> str:
    """`2019-03-26T20:14:13.192Z` (milliseconds, UTC), the form Step Functions uses."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
