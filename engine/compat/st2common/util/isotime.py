"""`st2common.util.isotime`: StackStorm's ISO 8601 helpers (the github pack uses them).

Same contract as StackStorm's: `validate` accepts datetimes and UTC strings only, `parse` returns an
aware datetime (UTC when the value had no zone), `format` writes `+00:00` or `Z`. Standard library
only (StackStorm's uses dateutil, which a pack's virtualenv may not have); for the strings `validate`
accepts, both parse to the same datetime.
"""

from __future__ import annotations

import datetime
import re

__all__ = ["add_utc_tz", "format", "get_datetime_utc_now", "parse", "validate"]

ISO8601_FORMAT = "%Y-%m-%dT%H:%M:%S"
ISO8601_FORMAT_MICROSECOND = "%Y-%m-%dT%H:%M:%S.%f"
ISO8601_UTC_REGEX = r"^\d{4}\-\d{2}\-\d{2}(\s|T)\d{2}:\d{2}:\d{2}(\.\d{3,6})?(Z|\+00|\+0000|\+00:00)$"
# timezone.utc, not datetime.UTC: this runs under packs' interpreters, which may predate Python 3.11.
_UTC = datetime.timezone.utc  # noqa: UP017
_FIELDS = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[\sT](\d{2}):(\d{2}):(\d{2})(?:\.(\d{3,6}))?")


def get_datetime_utc_now() -> datetime.datetime:
    """Now, in UTC, with the zone attached."""
    return datetime.datetime.now(_UTC)


def add_utc_tz(dt: datetime.datetime) -> datetime.datetime:
    """The same wall time, marked as UTC (replaces any zone, as StackStorm's does: no conversion)."""
    return dt.replace(tzinfo=_UTC)


def format(dt: datetime.datetime | str, usec: bool = True, offset: bool = True) -> str:
    """ISO 8601 text; `offset` writes `+HH:MM` (naive counts as UTC), else `Z` for UTC or the zone name."""
    if isinstance(dt, str):
        dt = parse(dt)
    fmt = ISO8601_FORMAT_MICROSECOND if usec else ISO8601_FORMAT
    if offset:
        ost = dt.strftime("%z")
        ost = (ost[:3] + ":" + ost[3:5]) if ost else "+00:00"
    else:
        tz = dt.tzinfo.tzname(dt) if dt.tzinfo else "UTC"
        ost = "Z" if tz == "UTC" else str(tz)
    return dt.strftime(fmt) + ost


def validate(value: object, raise_exception: bool = True) -> bool:
    """True for a datetime or a UTC ISO 8601 string; otherwise ValueError (or False)."""
    if isinstance(value, datetime.datetime) or (isinstance(value, str) and re.match(ISO8601_UTC_REGEX, value)):
        return True
    if raise_exception:
        raise ValueError("Datetime value does not match expected format.")
    return False


def parse(value: datetime.datetime | str) -> datetime.datetime:
    """An aware datetime from what `validate` accepts (a naive datetime is taken as UTC)."""
    validate(value, raise_exception=True)
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else add_utc_tz(value)
    match = _FIELDS.match(value)
    assert match is not None  # validate() matched a stricter pattern
    year, month, day, hour, minute, second, fraction = match.groups()
    micro = int((fraction or "0").ljust(6, "0"))
    return datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro,
                             tzinfo=_UTC)
