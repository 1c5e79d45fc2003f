"""Bodies at rest (DESIGN.md §8.6): the personal bodies of the ``bodies`` table are stored
XChaCha20-Poly1305 ciphertext under their subject's data key (collector.ledger.keyring).

Stored form (docs/protocol.md "Bodies at rest")::

    "TCE" 0x01 | key id (35 ASCII bytes, "dk-" + 32 hex) | nonce (24 random bytes) | AEAD output
    aad = "timeclock body v1" 0x00 | idx (decimal ASCII) 0x00 | body hash (64 hex) 0x00 | key id

A plaintext body is canonical JSON and starts with ``{``, so the two never mix up; a ledger
written before encryption keeps its plaintext bodies readable (``migrate`` seals them).

Which bodies are sealed, under which (subject, period):

- ``punch``: the employee the badge resolves to at the punch's device time (BadgeResolver),
  else the badge's keyed pseudonym; the UTC month of the device time;
- ``employee``: its employee id; ``badge``: its holder, else the credential's pseudonym; both
  in the month of the entry's ``at``;
- ``correction``: the key of the punch it amends (the same subject and month, so erasing the
  person erases the amendment with the punch);
- every other kind stays clear (device, access, checkpoints, grants, config, alerts, retention,
  shred...): none holds a credential or a name, and the verifiers need them.

Invariants: ``entries.body`` stays the SHA-256 of the plaintext, so the chain, the Merkle tree,
receipts and every proof are unchanged; every read of a body goes through :meth:`BodySealer.
plain` (None when its key was destroyed: the body is gone, like one retention removed);
a sealed body found without a keyring is an error that names ``[ledger] kek``. A punch's
(subject, period) and blind tag may be worked out before the append (:class:`PunchPlanner`,
on the ingest's judging thread); the append uses them only against the same badge periods
(:func:`directory_version`, read in its transaction) and else resolves the punch itself, so
the stored bytes never depend on where they were computed. The body seal binds the entry's
idx (:func:`body_aad`) and so stays in the append.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from nacl import bindings as sodium
from nacl._sodium import ffi as _ffi  # noqa: PLC2701 - libsodium's cffi handle (see open_body)
from nacl._sodium import lib as _lib  # noqa: PLC2701 - the same
from nacl.exceptions import CryptoError

from collector import KeyDestroyedError, KeyringError, LedgerError
from collector.ledger.base import SealPlan
from collector.ledger.keyring import Keyring, period_of

if TYPE_CHECKING:
    from collector.ledger.people_tables import BadgeResolver
    from collector.ledger.sqlbase import SQLStore, Tx
    from wire.punch import Punch

MAGIC = b"TCE\x01"
KEY_ID_BYTES = 35
NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES      # 24
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES                # 63
TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES          # 16
KEY_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_KEYBYTES        # 32
_AAD = b"timeclock body v1\x00"
DETS_MAX = 65_536           # deterministic ciphertexts a sealer remembers
RUN_KEYS_MAX = 65_536       # data keys one read run remembers (≈ 6 MB), then starts over
PLAN_TAGS_MAX = 65_536      # credentials' tags a punch planner remembers
SEALED_KINDS = frozenset({"punch", "employee", "badge", "correction"})
NO_KEK = ("this ledger's bodies are encrypted (DESIGN.md §8.6): set [ledger] kek = "
          "\"file:…\" | \"credential:NAME\" | \"pkcs11:…\" in the collector's config "
          "(or --kek) to read them")


def is_sealed(stored: bytes | None) -> bool:
    return stored is not None and stored[:4] == MAGIC


def body_aad(idx: int, body_hash: str, key_id: str) -> bytes:
    return _AAD + f"{idx}\x00{body_hash}\x00{key_id}".encode()


def sealed_key_id(stored: bytes) -> str:
    """The data key id in a sealed body's header."""
    if len(stored) < HEADER_BYTES + 16 or not is_sealed(stored):
        raise LedgerError("a sealed body is shorter than its header and tag")
    return stored[4:4 + KEY_ID_BYTES].decode("ascii", "replace")


def seal(plain: bytes, *, idx: int, body_hash: str, key_id: str, key: bytes) -> bytes:
    if len(key_id) != KEY_ID_BYTES:
        raise KeyringError(f"data key id {key_id!r} is not {KEY_ID_BYTES} characters")
    if len(key) != KEY_BYTES:
        raise KeyringError(f"data key {key_id} is not {KEY_BYTES} bytes")
    nonce = os.urandom(NONCE_BYTES)         # random 192-bit nonce (XChaCha20: no reuse risk)
    ad = body_aad(idx, body_hash, key_id)
    # libsodium directly, as open_body (nacl.bindings' per-call checks cost more than the
    # encryption of a punch body on the append's hot path)
    out = _ffi.new("unsigned char[]", len(plain) + TAG_BYTES)
    out_len = _ffi.new("unsigned long long *")
    _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, out_len, plain, len(plain), ad, len(ad), _ffi.NULL, nonce, key)
    ct: bytes = _ffi.buffer(out, out_len[0])[:]
    return MAGIC + key_id.encode("ascii") + nonce + ct


def open_body(stored: bytes, *, idx: int, body_hash: str, key: bytes,
              key_id: str | None = None) -> bytes:
    """The plaintext of a sealed body (``key_id``: its header's, when the caller has it)."""
    if key_id is None:
        key_id = sealed_key_id(stored)
    nonce = stored[4 + KEY_ID_BYTES:HEADER_BYTES]
    ct = stored[HEADER_BYTES:]
    ad = body_aad(idx, body_hash, key_id)
    # libsodium directly (what nacl.bindings wraps, minus its per-call argument checks: the
    # lengths are checked here), so a payroll export opens ≥ 50,000 bodies a second.
    n = len(ct) - TAG_BYTES
    if n < 0 or len(nonce) != NONCE_BYTES or len(key) != KEY_BYTES:
        raise LedgerError(f"the sealed body of entry {idx} is damaged (too short)")
    out = _ffi.new("unsigned char[]", max(n, 1))
    out_len = _ffi.new("unsigned long long *")
    if _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            out, out_len, _ffi.NULL, ct, len(ct), ad, len(ad), nonce, key) != 0:
        raise LedgerError(f"the sealed body of entry {idx} does not open under its data key "
                          f"{key_id} (edited, or moved from another entry)")
    plain: bytes = _ffi.buffer(out, out_len[0])[:]
    return plain


class BodySealer:
    """Seals bodies on append and opens them on read, with one keyring's cached keys."""

    def __init__(self, ring: Keyring) -> None:
        self.ring = ring
        self._dets: dict[tuple[str, str], str] = {}    # (column, value) → det(value)
        self._planner: PunchPlanner | None = None
        self._planner_stale = False     # an append read another directory version

    # -- read -------------------------------------------------------------------------------
    def plain(self, idx: int, body_hash: Any, stored: bytes | None) -> bytes | None:
        """The plaintext of a stored body: itself when clear, None when absent or when its
        data key was destroyed."""
        if stored is None or not is_sealed(stored):
            return stored
        key_id = sealed_key_id(stored)
        try:
            key = self.ring.key(key_id)
        except KeyDestroyedError:
            return None
        return open_body(stored, idx=int(idx), body_hash=str(body_hash), key=key,
                         key_id=key_id)

    def run_opener(self, keys: dict[bytes, bytes | None] | None = None
                   ) -> Callable[[Any, Any, bytes | None], bytes | None]:
        """:meth:`plain` for one read run (an export, an API page): the unwrapped data keys
        the run meets are kept in its own map, so a run over more (subject, month) keys than
        the keyring's LRU holds unwraps each once, never once per row (the LRU, visited in
        device-time order by thousands of people, would evict every key before its next
        row). Destroyed keys are remembered as such; the map ends with the run. ``keys``:
        the map itself (by the key id's bytes in the header), when the caller drops the
        keys it is done with (an export worker's finished months: readers.forget_months)."""
        if keys is None:
            keys = {}
        ring = self.ring
        decrypt, null, buffer = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt, _ffi.NULL, \
            _ffi.buffer
        out_len = _ffi.new("unsigned long long *")
        out: list[Any] = [_ffi.new("unsigned char[]", 1024), 1024]     # grown as needed
        kid_end, shortest = HEADER_BYTES - NONCE_BYTES, HEADER_BYTES + TAG_BYTES

        def opened(idx: Any, body_hash: Any, stored: bytes | None) -> bytes | None:
            # open_body inlined, with one output buffer for the run (the per-row cost).
            if stored is None or not stored.startswith(MAGIC):
                return stored
            if len(stored) < shortest:
                raise LedgerError(f"the sealed body of entry {idx} is damaged (too short)")
            kid = stored[4:kid_end]
            try:
                key = keys[kid]
            except KeyError:
                if len(keys) >= RUN_KEYS_MAX:
                    keys.clear()
                try:
                    key = keys[kid] = ring.key(kid.decode("ascii", "replace"))
                except KeyDestroyedError:
                    key = keys[kid] = None
            if key is None:
                return None
            n = len(stored) - HEADER_BYTES
            if n > out[1]:
                out[0], out[1] = _ffi.new("unsigned char[]", n), n
            ad = _AAD + f"{idx}\x00{body_hash}\x00".encode() + kid
            if len(key) != KEY_BYTES or decrypt(
                    out[0], out_len, null, stored[HEADER_BYTES:], n, ad, len(ad),
                    stored[kid_end:HEADER_BYTES], key) != 0:
                raise LedgerError(f"the sealed body of entry {idx} does not open under its "
                                  f"data key {kid.decode('ascii', 'replace')} (edited, or "
                                  f"moved from another entry)")
            plain: bytes = buffer(out[0], out_len[0])[:]
            return plain

        return opened

    def column(self, value: str, *, column: str, row_id: str) -> str:
        """A personal column's plaintext (itself when clear; :data:`ERASED` once its key is
        destroyed)."""
        if not is_sealed_column(value):
            return value
        key_id, _ = _column_parts(value, column, row_id)
        try:
            key = self.ring.key(key_id)
        except KeyDestroyedError:
            return ERASED
        return open_column(value, column=column, row_id=row_id, key=key, key_id=key_id)

    def det(self, value: str, *, column: str) -> str:
        """``value`` sealed deterministically (equal values give equal ciphertext, so the
        column stays a key and a lookup): ``tcd1:`` base64url(nonce || XChaCha20-Poly1305),
        key and nonce derived from the index key; it reveals equality, as a blind index."""
        memo = (column, value)     # deterministic: the append looks up each badge per batch
        found = self._dets.get(memo)
        if found is not None:
            return found
        key = self.ring.derived_key(_DET_PURPOSE + column)
        nonce = hmac.new(key, value.encode(), hashlib.sha256).digest()[:NONCE_BYTES]
        ct: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            value.encode(), column.encode(), nonce, key)
        out = DET_PREFIX + base64.urlsafe_b64encode(nonce + ct).decode()
        if len(self._dets) >= DETS_MAX:
            self._dets.clear()
        self._dets[memo] = out
        return out

    def undet(self, stored: str, *, column: str) -> str:
        """The plaintext of :meth:`det` (a clear value is returned as it is)."""
        if not is_det(stored):
            return stored
        blob = base64.urlsafe_b64decode(stored[len(DET_PREFIX):].encode())
        key = self.ring.derived_key(_DET_PURPOSE + column)
        try:
            out: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                blob[NONCE_BYTES:], column.encode(), blob[:NONCE_BYTES], key)
        except CryptoError as e:
            raise LedgerError(f"a sealed {column} value does not open (edited?)") from e
        return out.decode()

    def seal_column(self, tx: Tx, value: str, *, column: str, row_id: str, subject: str,
                    idx: int) -> str:
        """``value`` sealed under ``subject``'s directory key (created in ``tx`` if new)."""
        dk = self.ring.data_key(tx, subject, DIRECTORY_PERIOD, idx=idx)
        return seal_column(value, column=column, row_id=row_id, key_id=dk.key_id, key=dk.key)

    # -- ahead of the append (the ingest's judging) -------------------------------------------
    def planner(self, store: SQLStore) -> PunchPlanner:
        """A :class:`PunchPlanner` over the people directory: the last one while no append
        has read another directory version since it was made (:meth:`directory_seen`), else
        one over the badge periods ``store`` holds now (its version and, if that changed,
        the periods). Called by the thread that owns the store; the planner is then used
        from any. A change no append has seen yet only makes the next plans stale, which the
        append finds and redoes (no query here per batch)."""
        planner = self._planner
        if planner is not None and not self._planner_stale:
            return planner
        version = directory_version(store.query)
        if planner is None or planner.directory != version:
            from collector.ledger.people_tables import BadgeResolver  # noqa: PLC0415 - as in subjects

            resolver = BadgeResolver.load(store) if version is not None else BadgeResolver({})
            planner = self._planner = PunchPlanner(self, version, resolver)
        self._planner_stale = False
        return planner

    def directory_seen(self, version: tuple[int, int] | None) -> None:
        """An append read ``version`` of the directory: a planner of another is stale."""
        if self._planner is not None and self._planner.directory != version:
            self._planner_stale = True

    # -- write (inside the append's transaction) ---------------------------------------------
    def subjects(self, tx: Tx, pending: Iterable[tuple[int, str, int, dict[str, Any] | None,
                                                       bytes]]
                 ) -> dict[int, tuple[str, str] | str]:
        """(subject, period) — or the key id to reuse — of each pending personal body:
        ``pending`` is (idx, kind, at, punch fields or None, plaintext)."""
        from collector.ledger import people_tables  # noqa: PLC0415 - people_tables imports nothing of the store at import time

        todo = [p for p in pending if p[1] in SEALED_KINDS]
        creds = {p[3]["credential"] for p in todo if p[1] == "punch" and p[3] is not None}
        resolver = people_tables.BadgeResolver(people_tables.tx_periods(tx, creds)) \
            if creds else None
        out: dict[int, tuple[str, str] | str] = {}
        for idx, kind, at, punch, plain in todo:
            if kind == "punch" and punch is not None and resolver is not None:
                employee, _ = resolver.resolve(punch["credential"], punch["ts"])
                subject = employee or self.ring.badge_subject(punch["credential"])
                out[idx] = (subject, period_of(punch["ts"]))
            elif kind in ("employee", "badge"):
                doc = json.loads(plain)
                subject = doc.get("employee_id") or self.ring.badge_subject(doc["credential"])
                out[idx] = (str(subject), period_of(at))
            elif kind == "correction":
                original = int(json.loads(plain)["original_idx"])
                key_id = self._key_of(tx, original)
                if key_id is not None:
                    out[idx] = key_id
        return out

    @staticmethod
    def _key_of(tx: Tx, idx: int) -> str | None:
        """The data key id of the stored body of entry ``idx`` (None: clear or absent)."""
        found = tx.rows("SELECT body FROM bodies WHERE idx = ?", (idx,))
        if found and found[0][0] is not None and is_sealed(bytes(found[0][0])):
            return sealed_key_id(bytes(found[0][0]))
        return None

    def seal_all(self, tx: Tx, bodies: list[tuple[int, bytes]], hashes: dict[int, str],
                 subjects: dict[int, tuple[str, str] | str]) -> list[tuple[int, bytes]]:
        """``bodies`` with each personal one sealed under its (subject, period)'s key (created
        in ``tx`` when new): one key lookup per distinct subject and month, not per body."""
        first: dict[tuple[str, str], int] = {}
        for idx, _ in bodies:
            target = subjects.get(idx)
            if isinstance(target, tuple) and target not in first:
                first[target] = idx
        keys = {t: (dk.key_id, dk.key) for t, dk in self.ring.data_keys(tx, first).items()}
        todo: list[tuple[int, bytes, str, str, bytes]] = []    # (idx, plain, hash, id, key)
        for idx, plain in bodies:
            target = subjects.get(idx)
            if target is None:
                continue
            if isinstance(target, str):
                key_id, key = target, self.ring.key(target)
            else:
                if target not in keys:
                    dk = self.ring.data_key(tx, target[0], target[1], idx=idx)
                    keys[target] = (dk.key_id, dk.key)
                key_id, key = keys[target]
            todo.append((idx, plain, hashes[idx], key_id, key))
        sealed = dict(zip((t[0] for t in todo), seal_many(todo), strict=True))
        return [(idx, sealed.get(idx, plain)) for idx, plain in bodies]


_BADGES_VERSION = "SELECT COUNT(*), MAX(changed_idx) FROM tc_badges"


def directory_version(rows: Callable[[str], list[tuple[Any, ...]]]
                      ) -> tuple[int, int] | None:
    """(row count, newest ``changed_idx``) of ``tc_badges`` through ``rows`` (a store's query or
    a transaction's rows), None when it holds no period: it changes with every badge entry and
    every erasure (rows are never deleted and an update always raises ``changed_idx``: the
    table's triggers), so equal versions mean the same badge periods."""
    count, newest = rows(_BADGES_VERSION)[0]
    return None if not count else (int(count), int(newest))


class PunchPlanner:
    """Makes each punch's :class:`~collector.ledger.base.SealPlan` from one snapshot of the
    badge periods (``directory``: its version), off the writer thread: the same blind tag and
    (subject, period) as :meth:`BodySealer.subjects` derives in the append. Read-only after
    construction; the keyring's memo of tags tolerates concurrent use."""

    def __init__(self, sealer: BodySealer, directory: tuple[int, int] | None,
                 resolver: BadgeResolver) -> None:
        self.sealer = sealer
        self.directory = directory
        self._resolve = resolver.resolve
        self._ring = sealer.ring
        # credential → (blind tag, pseudonymous subject): both keyed by the index key alone
        self._tags: dict[str, tuple[str, str]] = {}

    def plan(self, punch: Punch) -> SealPlan:
        cred, ts = punch.credential, punch.ts
        tags = self._tags.get(cred)
        if tags is None:
            if len(self._tags) >= PLAN_TAGS_MAX:
                self._tags.clear()
            tags = self._tags[cred] = (self._ring.blind(cred), self._ring.badge_subject(cred))
        employee, _ = self._resolve(cred, ts)
        return SealPlan(tags[0], employee or tags[1], period_of(ts), self.directory,
                        self.sealer)


def seal_many(items: Sequence[tuple[int, bytes, str, str, bytes]]) -> list[bytes]:
    """:func:`seal` of each (idx, plaintext, body hash, key id, key): the same bytes, built
    with one output buffer and one random draw for the batch's nonces (the append's hot path:
    per body, the cffi allocations and a getrandom call cost more than the AEAD itself)."""
    if not items:
        return []
    for _, _, _, key_id, key in items:
        if len(key_id) != KEY_ID_BYTES:
            raise KeyringError(f"data key id {key_id!r} is not {KEY_ID_BYTES} characters")
        if len(key) != KEY_BYTES:
            raise KeyringError(f"data key {key_id} is not {KEY_BYTES} bytes")
    nonces = os.urandom(NONCE_BYTES * len(items))   # random 192-bit nonces, one draw
    size = HEADER_BYTES + max(len(t[1]) for t in items) + TAG_BYTES
    out = _ffi.new("unsigned char[]", size)
    ct_at = out + HEADER_BYTES          # the header is written in front of the AEAD output
    out_len = _ffi.new("unsigned long long *")
    encrypt, memmove, buffer = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt, \
        _ffi.memmove, _ffi.buffer
    null = _ffi.NULL
    heads: dict[str, bytes] = {}
    sealed: list[bytes] = []
    at = 0
    for idx, plain, body_hash, key_id, key in items:
        nonce = nonces[at:at + NONCE_BYTES]
        at += NONCE_BYTES
        head = heads.get(key_id)
        if head is None:
            head = heads[key_id] = MAGIC + key_id.encode("ascii")
        ad = _AAD + f"{idx}\x00{body_hash}\x00{key_id}".encode()
        encrypt(ct_at, out_len, plain, len(plain), ad, len(ad), null, nonce, key)
        memmove(out, head + nonce, HEADER_BYTES)
        sealed.append(buffer(out, HEADER_BYTES + out_len[0])[:])
    return sealed


COLUMN_PREFIX = "tce1:"
DIRECTORY_PERIOD = "directory"      # the period of a person's directory columns
ERASED = "(erased)"                 # what a sealed column shows once its key is destroyed
_COLUMN_AAD = b"timeclock column v1\x00"


def column_aad(column: str, row_id: str, key_id: str) -> bytes:
    return _COLUMN_AAD + f"{column}\x00{row_id}\x00{key_id}".encode()


def seal_column(value: str, *, column: str, row_id: str, key_id: str, key: bytes) -> str:
    """A personal text column sealed: ``tce1:`` key id ``:`` base64url(nonce || AEAD)."""
    nonce = sodium.randombytes(NONCE_BYTES)
    ct: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        value.encode(), column_aad(column, row_id, key_id), nonce, key)
    return f"{COLUMN_PREFIX}{key_id}:{base64.urlsafe_b64encode(nonce + ct).decode()}"


def is_sealed_column(value: str) -> bool:
    return value.startswith(COLUMN_PREFIX)


def _column_parts(value: str, column: str, row_id: str) -> tuple[str, bytes]:
    key_id, _, b64 = value[len(COLUMN_PREFIX):].partition(":")
    try:
        blob = base64.urlsafe_b64decode(b64.encode())
    except ValueError as e:
        raise LedgerError(f"{column} of {row_id} is not a sealed value") from e
    if len(key_id) != KEY_ID_BYTES or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise LedgerError(f"{column} of {row_id} is not a sealed value")
    return key_id, blob


def open_column(value: str, *, column: str, row_id: str, key: bytes, key_id: str) -> str:
    blob = _column_parts(value, column, row_id)[1]
    try:
        out: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[NONCE_BYTES:], column_aad(column, row_id, key_id), blob[:NONCE_BYTES], key)
    except CryptoError as e:
        raise LedgerError(f"{column} of {row_id} does not open under its data key {key_id} "
                          f"(edited, or moved from another row)") from e
    return out.decode()


DET_PREFIX = "tcd1:"
_DET_PURPOSE = "deterministic:"


def is_det(value: str) -> bool:
    return value.startswith(DET_PREFIX)


def unsealed_error(stored: bytes | None) -> None:
    """Raise the operator's error for a sealed body read by a store without a keyring."""
    if is_sealed(stored):
        raise KeyringError(NO_KEK)
