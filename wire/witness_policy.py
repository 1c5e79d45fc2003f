"""A witness policy: whose cosignatures count and how many the newest checkpoint needs
(DESIGN.md §8.3, docs/protocol.md §13.2).

The verifier (``timeclock-verify``) is given a policy on its command line (``--witness VKEY``
repeated, ``--quorum N``) or as a file (``--witness-policy FILE``). The file is text, one
directive per line; ``#`` starts a comment, blank lines are ignored::

    # payroll provider's policy for the ACME ledger
    origin acme.example/timeclock
    witness acme.example/timeclock/devices/clock-0017+83c35470+BAOhB7/z…
    witness witness.hr.acme.example+1f2e3d4c+BPq…
    quorum 2
    external 1
    max-age 86400

- ``origin``: optional; the log's origin, pinned (the checkpoints must carry it).
- ``witness``: a C2SP vkey of a cosignature/v1 (type 0x04) key; repeat per witness. The
  operator enrols clocks, so a policy *names* the clocks whose cosignatures count; a clock
  that is not named counts for nothing, whatever the ledger says about it.
- ``quorum``: how many of the named witnesses must have cosigned the newest checkpoint, a
  number or ``all`` (the default).
- ``external``: how many of those must be external witnesses (default 0; DESIGN.md §8.3 says
  a policy should require at least one): a witness is a *clock* of the log when its name is
  ``<origin>/devices/<device id>``, external otherwise.
- ``clocks enrolled-before-trusted``: optional: also count every clock whose signing key the
  ledger itself registered before the largest trusted checkpoint (the key in force at that
  size, as ``<origin>/devices/<device id>``, not revoked since): the operator could enrol a
  clock of its own only *after* a checkpoint the auditor already holds. Needs a numeric
  ``quorum``; without a trusted checkpoint it adds no clock.
- ``max-age``: optional, seconds: a cosignature counts only if its timestamp is at most this
  old at the verifier's ``now``. Without it, a ledger truncated back to exactly an old,
  genuinely cosigned checkpoint still meets the quorum (only a trusted checkpoint or a fresh
  cosignature can tell it from the real log).

Invariants: a :class:`WitnessPolicy` that exists is consistent (only type 0x04 keys, no name
or key id twice, 0 ≤ external ≤ quorum ≤ witnesses); :meth:`WitnessPolicy.check` refuses a
note in which a named witness's line does not verify (C2SP: reject, do not skip).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wire.errors import WireError
from wire.note import COSIGNATURE_V1, Checkpoint, Note, NoteVerifier, check_origin

MAX_POLICY_BYTES = 1 << 20
DIRECTIVES = ("origin", "witness", "quorum", "external", "max-age", "clocks")
ENROLLED_BEFORE_TRUSTED = "enrolled-before-trusted"


class PolicyError(WireError):
    """A witness policy that cannot be read or is inconsistent."""

    reason = "policy"


def is_clock(witness_name: str, origin: str) -> bool:
    """A clock of this log cosigns as ``<origin>/devices/<device id>`` (DESIGN.md §8.3)."""
    prefix = f"{origin}/devices/"
    return witness_name.startswith(prefix) and len(witness_name) > len(prefix)


@dataclass(frozen=True, slots=True)
class QuorumResult:
    """Who cosigned the checked checkpoint, among the policy's witnesses."""

    cosigned: tuple[str, ...]       # names whose cosignature verifies (and is fresh enough)
    stale: tuple[str, ...]          # names whose cosignature verifies but is older than max-age
    external: tuple[str, ...]       # the external witnesses among ``cosigned``
    quorum: int
    external_quorum: int

    @property
    def met(self) -> bool:
        return len(self.cosigned) >= self.quorum and len(self.external) >= self.external_quorum

    def shortfall(self) -> str:
        """Why the quorum is not met (empty when it is)."""
        parts = []
        if len(self.cosigned) < self.quorum:
            parts.append(f"{len(self.cosigned)} of the required {self.quorum} witness "
                         f"cosignatures")
        if len(self.external) < self.external_quorum:
            parts.append(f"{len(self.external)} of the required {self.external_quorum} "
                         f"external witness cosignatures")
        if self.stale:
            parts.append(f"too old to count: {', '.join(self.stale)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {"cosigned_by": list(self.cosigned), "stale": list(self.stale),
                "external": list(self.external), "quorum": self.quorum,
                "external_quorum": self.external_quorum, "met": self.met}


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    witnesses: tuple[NoteVerifier, ...] = ()
    quorum: int = 0
    external: int = 0
    origin: str | None = None
    max_age_s: int | None = None
    enrolled_clocks: bool = False     # also count clocks enrolled before the trusted checkpoint

    def __post_init__(self) -> None:
        names: set[str] = set()
        ids: set[bytes] = set()
        for w in self.witnesses:
            if w.kind != COSIGNATURE_V1:
                raise PolicyError(f"witness {w.name[:80]!r} is a type 0x{w.kind:02x} key; a "
                                  "witness key is a cosignature/v1 (0x04) vkey")
            if w.name in names or w.key_id in ids:
                raise PolicyError(f"witness {w.name[:80]!r} is named twice")
            names.add(w.name)
            ids.add(w.key_id)
        if self.quorum < 0 or (self.quorum > len(self.witnesses) and not self.enrolled_clocks):
            raise PolicyError(f"quorum {self.quorum} needs 0…{len(self.witnesses)} (the "
                              f"number of witnesses given)")
        if not 0 <= self.external <= self.quorum:
            raise PolicyError(f"external {self.external} needs 0…{self.quorum} (the quorum)")
        if self.external and self.origin is None:
            raise PolicyError("external needs origin (to tell clocks from external witnesses)")
        if self.origin is not None:
            try:
                check_origin(self.origin)
            except WireError as e:
                raise PolicyError(f"origin: {e}") from e
        if self.max_age_s is not None and self.max_age_s < 0:
            raise PolicyError("max-age must be ≥ 0 seconds")

    @property
    def empty(self) -> bool:
        return not self.witnesses and self.max_age_s is None and not self.enrolled_clocks

    def with_clocks(self, clocks: Iterable[NoteVerifier]) -> WitnessPolicy:
        """This policy with ``clocks`` (derived from the ledger) counted too; a clock the
        policy already names keeps the named key."""
        named = {w.name for w in self.witnesses}
        extra = tuple(c for c in clocks if c.name not in named)
        return WitnessPolicy((*self.witnesses, *extra), self.quorum, self.external,
                             self.origin, self.max_age_s, enrolled_clocks=True)

    # -- building --------------------------------------------------------------------------

    @classmethod
    def from_args(cls, vkeys: Sequence[str], quorum: int | None = None, *,
                  origin: str | None = None, external: int = 0,
                  max_age_s: int | None = None) -> WitnessPolicy:
        """``--witness`` values and ``--quorum`` (None: every witness given)."""
        witnesses = tuple(_vkey(v, f"--witness {v[:60]!r}") for v in vkeys)
        return cls(witnesses, len(witnesses) if quorum is None else quorum, external,
                   origin, max_age_s)

    @classmethod
    def from_text(cls, text: str, source: str = "witness policy") -> WitnessPolicy:
        vkeys: list[str] = []
        seen: dict[str, str] = {}
        problems: list[str] = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            word, _, value = line.partition(" ")
            value = value.strip()
            where = f"{source} line {n}"
            if word not in DIRECTIVES:
                problems.append(f"{where}: unknown directive {word[:40]!r} (known: "
                                f"{', '.join(DIRECTIVES)})")
            elif not value or " " in value:
                problems.append(f"{where}: {word} takes exactly one value")
            elif word == "witness":
                vkeys.append(value)
            elif word in seen:
                problems.append(f"{where}: {word} given twice")
            else:
                seen[word] = value
        if problems:
            raise PolicyError("; ".join(problems))
        try:
            witnesses = tuple(_vkey(v, f"{source}: witness {v[:60]!r}") for v in vkeys)
            clocks = seen.get("clocks")
            if clocks is not None and clocks != ENROLLED_BEFORE_TRUSTED:
                raise PolicyError(f"clocks {clocks[:40]!r}: the one value is "
                                  f"{ENROLLED_BEFORE_TRUSTED}")
            quorum_text = seen.get("quorum", "all")
            if quorum_text == "all" and clocks is not None:
                raise PolicyError("quorum all is not defined with clocks "
                                  f"{ENROLLED_BEFORE_TRUSTED}: give a number")
            quorum = len(witnesses) if quorum_text == "all" else _count(quorum_text, "quorum")
            external = _count(seen.get("external", "0"), "external")
            max_age = seen.get("max-age")
            return cls(witnesses, quorum, external, seen.get("origin"),
                       None if max_age is None else _count(max_age, "max-age"),
                       enrolled_clocks=clocks is not None)
        except PolicyError as e:
            raise PolicyError(f"{source}: {e}") from e

    @classmethod
    def load(cls, path: Path) -> WitnessPolicy:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_POLICY_BYTES + 1)
        except OSError as e:
            raise PolicyError(f"{path}: cannot read witness policy: {e.strerror}") from e
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyError(f"{path}: witness policy is larger than {MAX_POLICY_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"{path}: witness policy is not UTF-8") from e
        return cls.from_text(text, str(path))

    # -- checking --------------------------------------------------------------------------

    def check(self, cp: Checkpoint, note: Note, *, now_s: int | None = None) -> QuorumResult:
        """Count the policy's witnesses that cosigned ``note`` (a note of ``cp``).

        Raises :class:`~wire.errors.SignatureError` when a named witness's line does not
        verify. With ``max_age_s``, ``now_s`` (POSIX seconds) is required.
        """
        if self.origin is not None and cp.origin != self.origin:
            raise PolicyError(f"checkpoint origin {cp.origin[:80]!r} is not the policy's "
                              f"origin {self.origin[:80]!r}")
        if self.max_age_s is not None and now_s is None:
            raise ValueError("a policy with max-age needs now_s")
        cosigned: list[str] = []
        stale: list[str] = []
        for w in self.witnesses:
            if not any(w.matches(s) for s in note.signatures):
                continue
            timestamp = cp.verify_cosignature(note, w)
            if self.max_age_s is not None and now_s is not None and \
                    now_s - timestamp > self.max_age_s:
                stale.append(w.name)
            else:
                cosigned.append(w.name)
        external = tuple(n for n in cosigned if not is_clock(n, cp.origin))
        return QuorumResult(tuple(cosigned), tuple(stale), external, self.quorum, self.external)

    def verify_lines(self, cp: Checkpoint, note: Note) -> None:
        """Verify every named witness's line in ``note`` (an older checkpoint: no quorum)."""
        for w in self.witnesses:
            if any(w.matches(s) for s in note.signatures):
                cp.verify_cosignature(note, w)

    def describe(self) -> str:
        if not self.witnesses and not self.enrolled_clocks:
            return "no witnesses (quorum 0)"
        ext = f", {self.external} external" if self.external else ""
        age = f", cosigned within {self.max_age_s} s" if self.max_age_s is not None else ""
        clocks = (" (with the clocks enrolled before the trusted checkpoint)"
                  if self.enrolled_clocks else "")
        return f"quorum {self.quorum} of {len(self.witnesses)} witnesses{clocks}{ext}{age}"

    def names(self) -> Iterable[str]:
        return (w.name for w in self.witnesses)


def _vkey(text: str, what: str) -> NoteVerifier:
    try:
        return NoteVerifier.from_vkey(text.strip())
    except WireError as e:
        raise PolicyError(f"{what}: not a C2SP verifier key ({e})") from e


def _count(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise PolicyError(f"{what} {text[:20]!r} is not a non-negative integer")
    return int(text)
