"""Policy documents and their acknowledgement (issue 13 item 9; docs/operations.md "Policy
documents and acknowledgements"; the templates are docs/policies/).

- ``publish``: a ``policy_doc`` entry fixes a document's bytes by SHA-256 as version N+1 of
  its name (the same bytes again are refused: nothing changed). The newest version is current.
- ``acknowledge``: an ``acknowledgement`` entry says that a principal acknowledged the
  current version (its hash) at a time. Only the current version can be acknowledged.
- :class:`AckView` is what request-time authorisation asks (collector.api.rbac): a principal
  using a role that touches punch data (wire.grants.PUNCH_DATA_ROLES) needs an
  acknowledgement of the current version of every required document, younger than
  ``[policies] max_ack_age_days``; the refusal names the document to acknowledge.
- :func:`due` reports who is due (missing, another version, too old).

Which documents are required (``[policies] required``, default: every published one) and
whether it is enforced (``enforce``, default true): a site that has published nothing is
unaffected (no document, nothing to acknowledge), so turning it on by default breaks no
existing site's tokens; once a document is published, punch-data access waits for its
acknowledgement (POST /v1/acknowledgements, which the gate never blocks).

Invariants: the replay is the chain (no projection table); checks and the entry they allow
run in one transaction under the chain lock; time comes in as ``now_us``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector import ForbiddenError, ReviewError
from collector.access.principals import PrincipalError, all_principals, get_principal
from collector.ledger import review_rows as R
from collector.ledger.sqlbase import SQLStore
from wire.bodies_policy_doc import (
    NAME_RE,
    Acknowledgement,
    PolicyDoc,
    parse_acknowledgement,
    parse_policy_doc,
)
from wire.config import Section
from wire.errors import WireError
from wire.grants import PUNCH_DATA_ROLES

log = logging.getLogger("timeclock.policies")

DAY_US = 86_400 * 1_000_000
DOC_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """``[policies]``: ``required`` None means every published document."""

    enforce: bool = True
    max_ack_age_days: int = 365
    required: tuple[str, ...] | None = None


def read_policies_section(sec: Section) -> PolicySettings:
    d = PolicySettings()
    required: tuple[str, ...] | None = None
    if sec.has("required") and sec.table["required"] == []:
        sec.raw("required")
        required = ()                      # nothing required: the gate has nothing to ask
    elif sec.has("required"):
        got = sec.string_list("required", pattern=NAME_RE, max_items=100)
        required = None if got is None else tuple(sorted(set(got)))
    s = PolicySettings(enforce=sec.boolean("enforce", d.enforce),
                       max_ack_age_days=sec.integer("max_ack_age_days", d.max_ack_age_days,
                                                    lo=1, hi=3650),
                       required=required)
    sec.finish()
    return s


@dataclass(frozen=True, slots=True)
class Published:
    idx: int
    at: int
    doc: PolicyDoc


@dataclass(slots=True)
class Ledgered:
    """The current version of each document and each principal's newest acknowledgement
    per document."""

    current: dict[str, Published]
    acks: dict[tuple[str, str], tuple[int, Acknowledgement]]


def _feed(state: Ledgered, idx: int, at: int, kind: str, body: bytes | None) -> None:
    try:
        value = json.loads(body or b"null")
        if kind == "policy_doc":
            d = parse_policy_doc(value)
            state.current[d.name] = Published(idx, at, d)
        else:
            a = parse_acknowledgement(value)
            state.acks[(a.principal, a.name)] = (idx, a)
    except (ValueError, WireError) as e:       # an edited body: `verify` reports it
        log.warning("%s entry %d does not parse (%s); ignored", kind, idx, e)


def replay(rows: R.Rows) -> Ledgered:
    state = Ledgered({}, {})
    found = [(r.idx, r.at, "policy_doc", r.body) for r in R.of_kind(rows, "policy_doc")]
    found += [(r.idx, r.at, "acknowledgement", r.body)
              for r in R.of_kind(rows, "acknowledgement")]
    for idx, at, kind, body in sorted(found):
        _feed(state, idx, at, kind, body)
    return state


def required_docs(state: Ledgered, settings: PolicySettings) -> list[str]:
    names = state.current.keys() if settings.required is None else settings.required
    return sorted(names)


def ack_problem(state: Ledgered, settings: PolicySettings, principal: str, name: str,
                now_us: int) -> str | None:
    """What is wrong with ``principal``'s acknowledgement of ``name`` (None: in order)."""
    pub = state.current.get(name)
    if pub is None:
        return f"policy {name!r} is required ([policies] required) but was never published"
    got = state.acks.get((principal, name))
    if got is None:
        return f"never acknowledged {name} v{pub.doc.version}"
    _, a = got
    if a.sha256 != pub.doc.sha256:
        return f"acknowledged {name} v{a.version}, not the current v{pub.doc.version}"
    if now_us - a.at > settings.max_ack_age_days * DAY_US:
        return (f"the acknowledgement of {name} v{a.version} is older than "
                f"{settings.max_ack_age_days} days")
    return None


def publish(store: SQLStore, path: Path, *, by: str, now_us: int, name: str | None = None,
            title: str | None = None) -> Published:
    """Record the bytes of ``path`` as the next version of ``name`` (default: the file's
    stem)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PrincipalError(f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > DOC_MAX_BYTES:
        raise PrincipalError(f"{path}: larger than {DOC_MAX_BYTES} bytes; publish a document")
    name = name or path.stem
    digest = hashlib.sha256(data).hexdigest()
    with store.transaction(now_us, what="publishing a policy document") as tx:
        prev = replay(tx.rows).current.get(name)
        if prev is not None and prev.doc.sha256 == digest:
            raise ReviewError(f"{name} v{prev.doc.version} (idx {prev.idx}) has these bytes "
                              f"already; nothing recorded")
        body: dict[str, Any] = {"name": name, "version": 1 if prev is None else
                                prev.doc.version + 1, "sha256": digest, "size": len(data),
                                "by": by}
        if title is not None:
            body["title"] = title
        try:
            doc = parse_policy_doc(body)
        except WireError as e:
            raise PrincipalError(f"policy document {name[:64]!r}: {e}") from e
        idx = tx.record("policy_doc", body)
    log.info("policy document %s v%d published by %s (idx %d)", name, doc.version, by, idx)
    return Published(idx, now_us, doc)


def acknowledge(store: SQLStore, principal: str, name: str, *, by: str, now_us: int,
                sha256: str | None = None) -> tuple[int, Acknowledgement]:
    """Record ``principal``'s acknowledgement of the current version of ``name`` (when
    ``sha256`` is given it must be the current version's: one acknowledges what one read)."""
    p = get_principal(store, principal)
    if p is None or p.disabled_at is not None:
        raise PrincipalError(f"no enabled principal {principal!r}")
    with store.transaction(now_us, what="recording an acknowledgement") as tx:
        pub = replay(tx.rows).current.get(name)
        if pub is None:
            raise PrincipalError(f"no policy document {name[:64]!r} is published (see "
                                 f"`policy-doc list`)")
        if sha256 is not None and sha256 != pub.doc.sha256:
            raise ReviewError(f"{name}: sha256 {sha256[:64]} is not the current v"
                              f"{pub.doc.version} ({pub.doc.sha256}); read and acknowledge "
                              f"the current version")
        body = {"principal": principal, "name": name, "version": pub.doc.version,
                "sha256": pub.doc.sha256, "at": now_us, "by": by}
        try:
            ack = parse_acknowledgement(body)
        except WireError as e:
            raise PrincipalError(f"acknowledgement: {e}") from e
        idx = tx.record("acknowledgement", body)
    log.info("%s acknowledged %s v%d (idx %d)", principal, name, ack.version, idx)
    return idx, ack


@dataclass(frozen=True, slots=True)
class DueRow:
    principal: str
    roles: tuple[str, ...]
    name: str
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "roles": list(self.roles), "document": self.name,
                "problem": self.problem}


def due(store: SQLStore, settings: PolicySettings, *, now_us: int) -> list[DueRow]:
    """Every enabled principal holding a punch-data role with each required document it
    must (re-)acknowledge."""
    state = replay(store.query)
    out: list[DueRow] = []
    for p in all_principals(store):
        if p.disabled_at is not None or not p.roles & PUNCH_DATA_ROLES:
            continue
        for name in required_docs(state, settings):
            problem = ack_problem(state, settings, p.name, name, now_us)
            if problem is not None:
                out.append(DueRow(p.name, tuple(sorted(p.roles)), name, problem))
    return out


def documents(store: SQLStore) -> list[dict[str, Any]]:
    return [{"name": p.doc.name, "version": p.doc.version, "sha256": p.doc.sha256,
             "size": p.doc.size, "title": p.doc.title, "idx": p.idx, "published_at": p.at,
             "by": p.doc.by} for p in replay(store.query).current.values()]


class AckView:
    """Request-time check, fed incrementally with the ``policy_doc`` and
    ``acknowledgement`` entries appended since the last request (collector.access.gates)."""

    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings or PolicySettings()
        self.state = Ledgered({}, {})

    def feed(self, idx: int, at: int, kind: str, body: bytes | None) -> None:
        _feed(self.state, idx, at, kind, body)

    def check(self, principal: str, role: str, now_us: int) -> None:
        """ForbiddenError naming the document ``principal`` must acknowledge before using
        the punch-data ``role``; nothing when enforcement is off or the role is another."""
        if not self.settings.enforce or role not in PUNCH_DATA_ROLES:
            return
        state = self.state
        for name in required_docs(state, self.settings):
            problem = ack_problem(state, self.settings, principal, name, now_us)
            if problem is not None:
                pub = state.current.get(name)
                what = f" v{pub.doc.version} (sha256 {pub.doc.sha256})" if pub else ""
                raise ForbiddenError(
                    f"{principal} must acknowledge policy document {name}{what} before using "
                    f"{role} ({problem}): POST /v1/acknowledgements "
                    f"{{\"name\": \"{name}\"}} or `timeclock-collector policy-doc "
                    f"acknowledge --name {name}`")
