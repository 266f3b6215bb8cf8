# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path, query and header parameters, bounded before anything reads the database: integers
fit the columns they are compared with, strings carry no control characters (PostgreSQL
refuses a NUL), times are aware and stay within years 1-9999 in UTC."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Header, Path, Query
from pydantic import AfterValidator

from gpuaas_control.validation import IDEMPOTENCY_KEY_RE

# The integer columns (ids, sequence numbers) are 32-bit on PostgreSQL.
MAX_ROW_ID = 2 ** 31 - 1
CONTROL = frozenset(chr(code) for code in list(range(32)) + [127])


def printable(value: str) -> str:
    if any(char in CONTROL for char in value):
        raise ValueError('must not contain control characters (NUL, newline, ...)')
    return value


def utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError('needs a time zone (e.g. 2026-11-01T00:00:00Z)')
    try:
        return value.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError('is out of range: in UTC it must fall within years 1-9999') from None


def _text(where, max_length, description=None):
    return Annotated[str, where(max_length=max_length, description=description),
                     AfterValidator(printable)]


Key = _text(Path, 80)
TenantFilter = _text(Query, 63, 'Only this tenant\'s (operators).')
NodeFilter = _text(Query, 63, 'Only this node\'s.')
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID)]
After = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description='Only what comes after this id.')]
LastEventId = Annotated[int | None, Header(ge=0, le=MAX_ROW_ID, description='Resume after this '
                                           'event (sent by EventSource on reconnect).')]
Time = Annotated[dt.datetime | None, Query(description='ISO 8601 with a time zone.'),
                 AfterValidator(lambda v: v if v is None else utc(v))]


def _idempotency_key(value):
    if value is not None and not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise ValueError('must be 1-64 letters, digits, _ or -')
    return value


IdempotencyKey = Annotated[str | None, Header(max_length=64, description='Retrying with the same '
                                              'key and the same body returns the first allocation; '
                                              'another body with it is refused (409).'),
                           AfterValidator(_idempotency_key)]
