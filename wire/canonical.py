"""Canonical JSON (RFC 8785 / JCS for the value subset of DESIGN.md §2) and a strict decoder.

Invariants: ``canonical(loads(b)) == b`` for every accepted canonical input; the decoder
rejects floats (including ``1.0`` and exponents), integers outside ±(2^53-1), duplicate keys,
NaN/Infinity, non-string keys, and lone surrogates that cannot be encoded as UTF-8.
"""

from __future__ import annotations

import json
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


def canonical_trusted(obj: JSONValue) -> bytes:
    """``canonical`` for values already known to be in the allowed subset.

    Only for objects built from validated wire dataclasses (their ``to_dict``): it skips the
    value walk, which dominates the cost of hashing and signing on the ingest hot path.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:
        raise DecodeError(f"$: cannot serialise canonically: {e}") from e


def _reject_float(text: str) -> float:
    raise DecodeError(f"floats are not allowed: {text[:32]}")


def _reject_constant(text: str) -> float:
    raise DecodeError(f"{text} is not allowed")


def _object_no_duplicates(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {}
    for k, v in pairs:
        if k in out:
            raise DecodeError(f"duplicate key {k!r}", field=k)
        out[k] = v
    return out


def _parse_int(text: str) -> int:
    # Bound the digit count before int() so a megabyte of digits cannot burn CPU.
    if len(text.lstrip("-")) > 16:
        raise DecodeError(f"integer {text[:20]}… outside ±(2^53-1)")
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise DecodeError(f"integer {text} outside ±(2^53-1)")
    return value


def loads(data: bytes | str) -> JSONValue:
    """Strictly decode JSON bytes; raise :class:`DecodeError` naming what is wrong."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"not UTF-8: {e.reason} at byte {e.start}") from e
    else:
        text = data
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
