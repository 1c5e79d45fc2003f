"""Every punch row that leaves the store is checked against the chain (issue 11, finding 8).

The ``punches`` table is a projection: what payroll and the API read, indexed for them. Someone
with write access to the database (SQLite with a trigger dropped, a PostgreSQL superuser) can
edit it without touching the chain, and ``verify`` would still say OK while the payroll file
shows the edited action. So no row is handed out on the projection's word: the payroll query
(sqlbase ``_PAYROLL``) also reads the row's entry and its body, and :class:`RowChecker`
accepts the row only when

1. the body's SHA-256 is the entry's ``body`` hash, and the entry's hash is the hash of its
   fields (so the row is tied to the entry the chain, the Merkle tree and every checkpoint
   commit to — those the verifiers and witnesses check);
2. the punch in that body has the row's device, seq, time, clock state, reader, credential,
   action and key, and the entry is a ``punch`` entry;
3. the row's site is the site of the device's enrolment entry (``devices.enrolled_idx``, its
   body hash checked the same way; read once per device and query).

Anything else is a :class:`ProjectionError`: the export or API response stops there (an API
stream is cut and its access record says so) and names the row and what differs, with what
to do. The full re-derivation of every projection is ``verify --full`` (projections.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from collector import KeyringError, LedgerError
from collector.ledger.sqlbase import PunchRow
from wire.ledger import LEDGER_DOMAIN

# The columns the payroll query adds after PunchRow's (see sqlbase._PAYROLL).
EXTRA_COLUMNS = ("e.kind", "e.body", "e.prev", "b.body")
# The body and entry hash of a device's enrolment entry (devices.enrolled_idx), ``?`` style.
ENROLMENT_SQL = ("SELECT e.body, b.body FROM devices d JOIN entries e ON e.idx = d.enrolled_idx "
                 "LEFT JOIN bodies b ON b.idx = d.enrolled_idx WHERE d.device = ?")
_NAMES = ("device", "seq", "ts", "clock", "reader", "credential", "action", "key")
_NOT_OPENING = ("its sealed body does not open under its data key (edited, or moved from "
                "another entry)")
_TAGS_MAX = 100_000     # credentials whose blind index an export remembers

Enrolment = Callable[[str], "tuple[Any, Any] | None"]
# (idx, body hash, stored body) → plaintext, None once its data key was destroyed
# (SQLStore.plain: DESIGN.md §8.6 bodies at rest).
Opener = Callable[[Any, Any, "bytes | None"], "bytes | None"]


class ProjectionError(LedgerError):
    """A projection row that does not match the chain's entries."""


def _bytes(v: Any) -> bytes | None:
    return None if v is None else bytes(v)


def _entry_hash(idx: int, kind: str, at: int, body: str, prev: str) -> str:
    # LEDGER_DOMAIN + canonical(entry): the fields are validated columns (tree.row_leaf_data).
    data = LEDGER_DOMAIN + (f'{{"at":{at},"body":"{body}","idx":{idx},"kind":"{kind}",'
                            f'"prev":"{prev}","v":1}}').encode()
    return hashlib.sha256(data).hexdigest()


def _same_punch(raw: bytes, p: PunchRow) -> bool:
    """Whether ``raw`` is the canonical JSON of a signed punch with ``p``'s fields, compared as
    bytes. A stored body is canonical (wire.punch: keys sorted, every string a pattern-checked
    value without quotes or escapes, boot a 36-character UUID, prev 64 hex), so the body is
    the template below with exactly one way to fill it; a row value holding a quote or a
    backslash could shift it, and never matches. False also for a body of any other shape:
    the caller then compares the parsed fields."""
    strings = p.action + p.clock + p.credential + p.device + p.key_id + p.reader
    if '"' in strings or "\\" in strings:
        return False
    head = f'{{"punch":{{"action":"{p.action}","boot":"'.encode()
    pos = len(head) + 36
    mid = (f'","clock":"{p.clock}","credential":"{p.credential}","device":"{p.device}",'
           f'"key":"{p.key_id}","mono":').encode()
    if not raw.startswith(head) or not raw.startswith(mid, pos):
        return False
    pos += len(mid)
    prev = raw.find(b',"prev":"', pos)
    if prev < 0 or not raw[pos:prev].isdigit():
        return False
    tail = f'","reader":"{p.reader}","seq":{p.seq},"ts":{p.ts},"v":1}},"sig":"'.encode()
    pos = prev + 9 + 64
    return raw.startswith(tail, pos) and raw.find(b'"', pos + len(tail)) == len(raw) - 2 \
        and raw.endswith(b'"}')


def _punch_fields(raw: bytes) -> tuple[Any, ...] | None:
    """(device, seq, ts, clock, reader, credential, action, key) of a signed punch body."""
    try:
        punch = json.loads(raw)["punch"]
        return (punch["device"], punch["seq"], punch["ts"], punch["clock"], punch["reader"],
                punch["credential"], punch["action"], punch["key"])
    except (ValueError, KeyError, TypeError):
        return None


class RowChecker:
    """Checks payroll rows (PunchRow's columns + :data:`EXTRA_COLUMNS`) one by one.
    ``enrolment(device)``: the (entry body hash, body) of :data:`ENROLMENT_SQL` for a device,
    or None; each device is looked up once."""

    def __init__(self, enrolment: Enrolment, opener: Opener | None = None,
                 blind: Callable[[str], str | None] | None = None) -> None:
        self._enrolment = enrolment
        self._open = opener
        self._blind = blind     # a keyed ledger's blind index of credentials (SQLStore)
        self._tags: dict[str, str] = {}     # credential → its index, computed once each
        self._sites: dict[str, str] = {}

    def rows(self, rs: Iterable[tuple[Any, ...]]) -> Iterator[PunchRow]:  # noqa: PLR0912 - one inlined per-row path
        """:meth:`row` of each of ``rs``, leaving out the punches whose body's data key was
        destroyed (an erasure, DESIGN.md §8.6): they are nobody's data any more.

        The per-row path of every export, inlined: a row is accepted here only when every
        check of :meth:`_checked` holds on its fast form (the body's template, a known site,
        a remembered blind index); any other row goes through :meth:`_checked` itself, which
        accepts it (a body of another shape whose parsed fields match) or names what
        differs. So this accepts exactly the rows :meth:`row` accepts."""
        opener, sha256, domain = self._open, hashlib.sha256, LEDGER_DOMAIN
        sites, tags, same, blind = self._sites, self._tags, hmac.compare_digest, self._blind
        # PunchRow's own __new__ is a Python frame per row; tuple.__new__ builds the same
        # object in C (the fast path's one allocation).
        new = tuple.__new__
        for r in rs:
            (device, site, seq, cred, action, ts, clock, reader, key_id, at, idx, entry_hash,
             kind, body_hash, prev, raw) = r
            if raw is not None and type(raw) is not bytes:
                raw = bytes(raw)
            if opener is not None and raw is not None:
                # _opened inlined (a frame per row): the same errors.
                try:
                    raw = opener(idx, body_hash, raw)
                except KeyringError:
                    raise       # no KEK, or the wrong one: the operator's, not the row's
                except LedgerError:
                    self._fail(PunchRow._make(r[:12]), _NOT_OPENING)
                if raw is None:
                    continue        # erased: its data key is destroyed
            known = sites.get(device)
            if raw is None or kind != "punch" or known is None or known != site:
                yield self._checked(r, raw)
                continue
            if cred and ":" not in cred:        # a keyed ledger's blind index (§8.6)
                start = raw.find(b'"credential":"')
                end = raw.find(b'"', start + 14) if start >= 0 else -1
                plain = raw[start + 14:end].decode("utf-8", "replace") if end > 0 else ""
                tag = tags.get(plain)
                if tag is None and blind is not None and plain:
                    tag = blind(plain)
                    if tag is not None and len(tags) < _TAGS_MAX:
                        tags[plain] = tag
                if tag is None or not same(tag, cred):
                    yield self._checked(r, raw)
                    continue
                cred = plain
            strings = action + clock + cred + device + key_id + reader
            if '"' in strings or "\\" in strings:
                yield self._checked(r, raw)
                continue
            head = f'{{"punch":{{"action":"{action}","boot":"'.encode()
            pos = len(head) + 36
            mid = (f'","clock":"{clock}","credential":"{cred}","device":"{device}",'
                   f'"key":"{key_id}","mono":').encode()
            tail = f'","reader":"{reader}","seq":{seq},"ts":{ts},"v":1}},"sig":"'.encode()
            prev_at = raw.find(b',"prev":"', pos + len(mid))
            if (raw.startswith(head) and raw.startswith(mid, pos) and prev_at > 0
                    and raw[pos + len(mid):prev_at].isdigit()
                    and raw.startswith(tail, prev_at + 73)
                    and raw.find(b'"', prev_at + 73 + len(tail)) == len(raw) - 2
                    and raw.endswith(b'"}')
                    and sha256(raw).hexdigest() == body_hash
                    and sha256(domain + (
                        f'{{"at":{at},"body":"{body_hash}","idx":{idx},"kind":"punch",'
                        f'"prev":"{prev}","v":1}}').encode()).hexdigest() == entry_hash):
                yield new(PunchRow, (device, site, seq, cred, action, ts, clock, reader,
                                     key_id, at, idx, entry_hash))
            else:
                yield self._checked(r, raw)

    def row(self, r: tuple[Any, ...]) -> PunchRow:
        """The PunchRow of ``r`` if it matches the chain; else :class:`ProjectionError`."""
        raw = _bytes(r[15])
        return self._checked(r, raw if self._open is None else self._opened(r, raw))

    def _opened(self, r: tuple[Any, ...], raw: bytes | None) -> bytes | None:
        assert self._open is not None  # noqa: S101 - callers check
        try:
            return self._open(r[10], r[13], raw)
        except KeyringError:
            raise               # no KEK, or the wrong one: the operator's, not the row's
        except LedgerError:
            self._fail(PunchRow._make(r[:12]), _NOT_OPENING)

    def _checked(self, r: tuple[Any, ...], raw: bytes | None) -> PunchRow:
        kind, body_hash, prev, _ = r[12:16]
        if raw is None:      # the payroll query joins bodies: only a caller's own query
            self._fail(PunchRow._make(r[:12]), "its entry has no body")
        cred = r[3]
        if cred and ":" not in cred:
            cred = self._unblinded(r, raw)
        p = PunchRow(r[0], r[1], r[2], cred, r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11])
        if kind != "punch":
            self._fail(p, f"its entry is a {kind!r} entry, not a punch")
        if hashlib.sha256(raw).hexdigest() != body_hash:
            self._fail(p, "the stored body is not the body the entry commits to")
        if _entry_hash(p.idx, kind, p.at, body_hash, prev) != p.entry_hash:
            self._fail(p, "the entry's hash is not the hash of its fields")
        if not _same_punch(raw, p):
            self._compare_parsed(p, raw)
        site = self._sites.get(p.device)
        if site is None:
            site = self._sites[p.device] = self._site(p)
        if p.site != site:
            self._fail(p, "its site is not the site of the device's enrolment entry")
        return p

    def _unblinded(self, r: tuple[Any, ...], raw: bytes) -> str:
        """A keyed ledger's row holds the blind index of the credential (DESIGN.md §8.6):
        the body's credential, once the index matches it."""
        start = raw.find(b'"credential":"')
        end = raw.find(b'"', start + 14) if start >= 0 else -1
        cred = raw[start + 14:end].decode("utf-8", "replace") if end > 0 else ""
        tag = self._tags.get(cred)
        if tag is None and self._blind is not None and cred:
            tag = self._blind(cred)
            if tag is not None and len(self._tags) < _TAGS_MAX:
                self._tags[cred] = tag
        if tag is None or not hmac.compare_digest(tag, r[3]):
            self._fail(PunchRow._make(r[:12]), "column(s) credential differ from the signed "
                                               "punch in the entry")
        return cred

    def _compare_parsed(self, p: PunchRow, raw: bytes) -> None:
        """The slow path: the body parsed as JSON, field by field (and which differ)."""
        fields = _punch_fields(raw)
        if fields is None:
            self._fail(p, "its body is not a signed punch")
        projected = (p.device, p.seq, p.ts, p.clock, p.reader, p.credential, p.action,
                     p.key_id)
        if fields != projected:
            differ = [n for n, a, b in zip(_NAMES, fields, projected, strict=True) if a != b]
            # Which columns, never their values: a credential is personal data.
            self._fail(p, f"column(s) {', '.join(differ)} differ from the signed punch in the "
                          f"entry")

    def _site(self, p: PunchRow) -> str:
        found = self._enrolment(p.device)
        raw = None if found is None else _bytes(found[1])
        if found is None or raw is None or hashlib.sha256(raw).hexdigest() != found[0]:
            self._fail(p, "the device's enrolment entry (devices.enrolled_idx) is missing or "
                          "its body is not the one the entry commits to")
        try:
            doc = json.loads(raw)
            site = str(doc["site"]) if doc["event"] == "enrolled" \
                and doc["device"] == p.device else None
        except (ValueError, KeyError, TypeError):
            site = None
        if site is None:
            self._fail(p, "devices.enrolled_idx does not point at this device's enrolment "
                          "entry")
        return site

    @staticmethod
    def _fail(p: PunchRow, why: str) -> NoReturn:
        raise ProjectionError(f"punch row {p.device}#{p.seq} (entry {p.idx}) does not match "
                              f"the ledger: {why}. The punches projection was changed "
                              f"outside the ledger: nothing more is exported; run "
                              f"`timeclock-collector verify --full` and investigate "
                              f"(docs/operations.md, 'Projections')")
