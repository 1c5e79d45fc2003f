"""Canonical JSON (RFC 8785 / JCS for the value subset of DESIGN.md §2) and a strict decoder.

Invariants: ``canonical(loads(b)) == b`` for every accepted canonical input; the decoder
rejects floats (including ``1.0`` and exponents), integers outside ±(2^53-1), duplicate keys,
NaN/Infinity, non-string keys, and lone surrogates that cannot be encoded as UTF-8.
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any

from wire.errors import DecodeError

MAX_SAFE_INT = 2**53 - 1

JSONValue = Any  # dict[str, JSONValue] | list[JSONValue] | str | int | bool | None


def _check_value(value: JSONValue, path: str) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise DecodeError(f"{path}: integer {value} outside ±(2^53-1)", field=path)
        return
    if isinstance(value, float):
        raise DecodeError(f"{path}: floats are not allowed", field=path)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise DecodeError(f"{path}: object keys must be strings", field=path)
            _check_value(v, f"{path}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, f"{path}[{i}]")
        return
    raise DecodeError(f"{path}: type {type(value).__name__} is not allowed", field=path)


def canonical(obj: JSONValue) -> bytes:
    """Serialise ``obj`` to its one canonical byte form (sorted keys, no whitespace, UTF-8)."""
    _check_value(obj, "$")
    return canonical_trusted(obj)


def _no_default(o: Any) -> Any:
    raise TypeError(f"type {type(o).__name__} is not JSON serializable")


def _make_encoder() -> Any:
    """The C encoder that ``json.dumps`` builds on every call, built once.

    Same arguments as ``json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)`` with ``check_circular`` off (trusted values are
    trees), so the bytes are identical; it saves the per-call encoder set-up, which is most
    of the cost for the small objects hashed on the ingest hot path. None without ``_json``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    encode_str = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or encode_str is None:
        return None
    return make(None, _no_default, encode_str, None, ":", ",", True, False, False)


_C_ENCODER = _make_encoder()


def canonical_trusted(obj: JSONValue) -> bytes:
    """``canonical`` for values already known to be in the allowed subset.

    Only for objects built from validated wire dataclasses (their ``to_dict``): it skips the
    value walk, which dominates the cost of hashing and signing on the ingest hot path.
    """
    try:
        if _C_ENCODER is not None and isinstance(obj, (dict, list)):
            return "".join(_C_ENCODER(obj, 0)).encode("utf-8")
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:
        raise DecodeError(f"$: cannot serialise canonically: {e}") from e


def _reject_float(text: str) -> float:
    raise DecodeError(f"floats are not allowed ({len(text)} chars)")   # never the value


def _reject_constant(text: str) -> float:
    raise DecodeError(f"{text} is not allowed")


def _object_no_duplicates(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = dict(pairs)
    if len(out) == len(pairs):   # the common case: no key twice
        return out
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise DecodeError(f"duplicate key {k!r}", field=k)
        seen.add(k)
    raise AssertionError("unreachable: fewer keys than pairs without a duplicate")


def _parse_int(text: str) -> int:
    # Bound the digit count before int() so a megabyte of digits cannot burn CPU.
    # Errors give the digit count, never the digits (a badge number sent as a JSON number).
    if len(text.lstrip("-")) > 16:
        raise DecodeError(f"an integer of {len(text)} chars is outside ±(2^53-1)")
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise DecodeError(f"an integer of {len(text)} chars is outside ±(2^53-1)")
    return value


def loads(data: bytes | str) -> JSONValue:
    """Strictly decode JSON bytes; raise :class:`DecodeError` naming what is wrong."""
    from_bytes = False
    if isinstance(data, (bytes, bytearray, memoryview)):
        from_bytes = True
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"not UTF-8: {e.reason} at byte {e.start}") from e
    else:
        text = str(data)
    try:
        value = json.loads(
            text,
            parse_float=_reject_float,
            parse_int=_parse_int,
            parse_constant=_reject_constant,
            object_pairs_hook=_object_no_duplicates,
        )
    except DecodeError:
        raise
    except (ValueError, RecursionError) as e:
        raise DecodeError(f"not JSON: {e}") from e
    # Strict UTF-8 decoding never yields a surrogate, so from bytes a lone surrogate can only
    # come from a backslash-u escape: without one in the text there is nothing to walk.
    if not from_bytes or "\\u" in text:
        _check_strings(value)
    return value


def _check_strings(value: JSONValue) -> None:
    # json.loads accepts "\ud800" escapes, which cannot be re-encoded canonically.
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise DecodeError("string contains a lone surrogate") from e
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
