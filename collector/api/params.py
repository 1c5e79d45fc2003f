"""Strict parsing of query parameters and JSON bodies; every failure is a BadRequestError.

The OpenAPI document declares the same names, types and limits (collector.api.openapi
builds its parameter list from ``PARAMS``), so the document and the code cannot drift.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from collector.api.errors import BadRequestError
from collector.records.exports import ExportError, parse_time
from wire.fields import CREDENTIAL_RE, DEVICE_ID_RE

SITE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TIME_DESC = ("µs since the Unix epoch, or ISO 8601 with a UTC offset "
             "(e.g. 2025-11-26T07:00:00Z)")

# name -> (JSON schema, description)
PARAMS: dict[str, tuple[dict[str, Any], str]] = {
    "since": ({"type": "string", "maxLength": 40},
              f"device time lower bound, inclusive: {TIME_DESC}"),
    "until": ({"type": "string", "maxLength": 40},
              f"device time upper bound, exclusive: {TIME_DESC}"),
    "site": ({"type": "string", "pattern": SITE_RE.pattern}, "site of the device"),
    "device": ({"type": "string", "pattern": DEVICE_ID_RE.pattern}, "device id"),
    "credential": ({"type": "string", "pattern": CREDENTIAL_RE.pattern},
                   "badge credential <format>:<id>"),
    "cursor": ({"type": "string", "maxLength": 200},
               "opaque cursor from the previous page's `next`"),
    "limit": ({"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)"),
    "format": ({"type": "string", "enum": ["json", "ndjson", "csv"]},
               "representation; overrides the Accept header"),
    "status": ({"type": "string", "enum": ["proposed", "approved", "rejected", "open",
                                           "acknowledged", "resolved"]},
               "correction status (proposed, approved, rejected) or, on /v1/alerts, alert "
               "status (open: not resolved; acknowledged; resolved)"),
    "after": ({"type": "integer", "minimum": 0},
              "return items after this ledger idx (or quarantine id)"),
    "from": ({"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
             "older tree size (e.g. of a checkpoint you hold)"),
    "to": ({"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
           "newer tree size (default: the newest checkpoint's)"),
    "size": ({"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
             "prove to the stored v2 checkpoint of this size (default: the newest covering "
             "the punch that carries a cosignature, else the newest)"),
    "proofs": ({"type": "string", "enum": ["0", "1"]},
               "1: each row carries its inclusion proof to the newest v2 checkpoint, whose "
               "note is in the header (NDJSON only; docs/protocol.md §13.3)"),
    "field_set": ({"type": "string", "enum": ["payroll", "audit", "investigation"]},
                  "the row fields by purpose (D20; docs/api.md 'Export fields'): payroll "
                  "(default, no credential), audit (+ key, reader), investigation "
                  "(+ credential; role hr.people)"),
    "fields": ({"type": "string", "maxLength": 400},
               "comma-separated fields of the field set to keep (default: all of the set)"),
    "department": ({"type": "string", "maxLength": 128}, "department of the employee"),
    "manager": ({"type": "string", "maxLength": 64}, "only this manager's direct reports"),
    "at": ({"type": "string", "maxLength": 40}, f"device time: {TIME_DESC} (default now)"),
    "unused_days": ({"type": "integer", "minimum": 1, "maximum": 3650},
                    "flag access unused for this many days (default 90)"),
    "employee": ({"type": "string", "maxLength": 64}, "one employee's id only"),
    "done": ({"type": "string", "pattern": "^(ack|resolve|proposed|approved|rejected|disputed)-"
                                           "([0-9]{1,16}|cor-[0-9A-Za-z_-]{1,36})$"},
             "console: what the form just did, shown as a message (e.g. ack-12)"),
    "page": ({"type": "integer", "minimum": 1, "maximum": 10000},
             "console: which page of a long list (1, the default, is the first)"),
    "round_minutes": ({"type": "integer", "minimum": 0, "maximum": 60},
                      "round shift starts and ends to this many minutes (default 0: off)"),
    "rounding": ({"type": "string", "enum": ["nearest", "down", "up"]},
                 "how round_minutes rounds (default nearest)"),
    "grace_minutes": ({"type": "integer", "minimum": 0, "maximum": 60},
                      "a start this many minutes after, or an end this many before, a "
                      "rounding boundary counts as the boundary (default 0)"),
    "period": ({"type": "string", "enum": ["weekly", "biweekly", "semimonthly", "monthly"]},
               "pay period (default weekly)"),
    "week_start": ({"type": "integer", "minimum": 0, "maximum": 6},
                   "first day of the week, 0 = Monday (default)"),
    "period_anchor": ({"type": "string", "maxLength": 10},
                      "biweekly: a date (YYYY-MM-DD) inside a first pay period"),
}


def check_known(query: MultiMapping[str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadRequestError(f"unknown query parameter(s) {', '.join(unknown)[:200]}; "
                              f"allowed: {', '.join(allowed) or '(none)'}")
    for k in query:
        if len(query.getall(k)) > 1:
            raise BadRequestError(f"query parameter {k} given more than once")


def string(query: MultiMapping[str], name: str, pattern: re.Pattern[str] | None = None
           ) -> str | None:
    v = query.get(name)
    if v is None:
        return None
    if pattern is not None and not pattern.fullmatch(v):
        raise BadRequestError(f"{name}: {v[:80]!r} does not match {pattern.pattern}")
    return v


def integer(query: MultiMapping[str], name: str, *, lo: int, hi: int,
            default: int | None = None) -> int | None:
    v = query.get(name)
    if v is None:
        return default
    if not re.fullmatch(r"-?\d{1,16}", v):
        raise BadRequestError(f"{name}: {v[:40]!r} is not an integer")
    n = int(v)
    if not lo <= n <= hi:
        raise BadRequestError(f"{name}: {n} is outside {lo}…{hi}")
    return n


def time(query: MultiMapping[str], name: str) -> int | None:
    v = query.get(name)
    if v is None:
        return None
    if len(v) > 40:
        raise BadRequestError(f"{name}: too long")
    try:
        t = parse_time(v)
    except (ExportError, ValueError, OverflowError) as e:
        raise BadRequestError(f"{name}: {e}") from e
    if not 0 <= t <= 2**53 - 1:
        raise BadRequestError(f"{name}: outside the representable range")
    return t


def choice(query: MultiMapping[str], name: str, options: tuple[str, ...]) -> str | None:
    v = query.get(name)
    if v is not None and v not in options:
        raise BadRequestError(f"{name}: {v[:40]!r} is not one of {', '.join(options)}")
    return v


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()
                                    ).decode().rstrip("=")


def decode_cursor(text: str) -> list[Any]:
    if len(text) > 200:
        raise BadRequestError("cursor: too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise BadRequestError("cursor: not a cursor returned by this API") from e
    if not isinstance(value, list):
        raise BadRequestError("cursor: not a cursor returned by this API")
    return value


async def json_body(request: web.Request, *, required: tuple[str, ...],
                    optional: tuple[str, ...] = (), max_bytes: int) -> dict[str, Any]:
    """The request's JSON object with exactly the allowed keys (values checked by callers)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequestError(f"body larger than {max_bytes} bytes")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BadRequestError(f"body larger than {max_bytes} bytes")
    if not raw.strip() and not required:
        return {}
    try:
        value = json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except DuplicateKeyError as e:
        raise BadRequestError(f"body: duplicate key {e.key[:80]!r} (a key may appear "
                              f"once per object)") from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequestError(f"body is not JSON: {str(e)[:120]}") from e
    if not isinstance(value, dict):
        raise BadRequestError("body must be a JSON object")
    missing = [k for k in required if k not in value]
    if missing:
        raise BadRequestError(f"body: missing {', '.join(missing)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise BadRequestError(f"body: unknown field(s) {', '.join(unknown)[:200]}")
    return value


class DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # As the wire decoder (wire.canonical.loads): a key twice is refused, never "last wins"
    # (two parsers could otherwise read one body two ways). Floats stay for the field
    # checks, whose messages name the field.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKeyError(k)
            seen.add(k)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def field_str(body: Mapping[str, Any], name: str, *, max_len: int = 500,
              pattern: re.Pattern[str] | None = None, default: str | None = None) -> str:
    v = body.get(name, default)
    if not isinstance(v, str) or len(v) > max_len:
        raise BadRequestError(f"{name}: a string of at most {max_len} characters")
    if pattern is not None and not pattern.fullmatch(v):
        raise BadRequestError(f"{name}: {v[:80]!r} does not match {pattern.pattern}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequestError(f"{name}: not valid Unicode text") from e
    return v


def field_int(body: Mapping[str, Any], name: str, *, lo: int, hi: int,
              default: int | None = None) -> int:
    v = body.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequestError(f"{name}: an integer in {lo}…{hi}")
    return v
