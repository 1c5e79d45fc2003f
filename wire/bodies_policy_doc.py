"""Bodies of ``policy_doc`` and ``acknowledgement`` ledger entries (docs/protocol.md §7.2;
issue 13 item 9, training and acknowledgement), parsed strictly in the manner of wire.bodies
(which dispatches to them).

- ``policy_doc``: one version of a policy document (``docs/policies/*.md``): its ``name``,
  ``version`` (1, 2, … per name), SHA-256 and size of its exact bytes, who published it. The
  newest version of a name is the current one; the bytes themselves stay in the repository or
  the document system, the ledger fixes which bytes were in force.
- ``acknowledgement``: ``principal`` acknowledges the version of ``name`` whose hash is
  ``sha256`` at ``at`` (µs); ``by`` is who recorded it (the principal itself through the API,
  ``cli:<user>`` on the host).

Checked here is what a body says on its own; that the version and hash are the published
ones is the collector's (collector.access.policy_docs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wire.bodies_breakglass import ACTOR_RE
from wire.errors import DecodeError
from wire.fields import HASH_RE, get_int, get_str, require_fields
from wire.key_changes import parse_principal

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
TITLE_MAX = 200


@dataclass(frozen=True, slots=True)
class PolicyDoc:
    name: str
    version: int
    sha256: str
    size: int
    by: str
    title: str | None


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    principal: str
    name: str
    version: int
    sha256: str
    at: int
    by: str


def parse_policy_doc(value: Any) -> PolicyDoc:
    obj = require_fields(value, "policy_doc body", ("name", "version", "sha256", "size", "by"))
    title = None
    if "title" in obj:
        title = get_str(obj, "title")
        if not title.strip() or len(title) > TITLE_MAX:
            raise DecodeError(f"title: 1…{TITLE_MAX} characters", field="title")
    return PolicyDoc(get_str(obj, "name", NAME_RE), get_int(obj, "version", minimum=1),
                     get_str(obj, "sha256", HASH_RE), get_int(obj, "size", minimum=0),
                     get_str(obj, "by", ACTOR_RE), title)


def parse_acknowledgement(value: Any) -> Acknowledgement:
    obj = require_fields(value, "acknowledgement body",
                         ("principal", "name", "version", "sha256", "at", "by"))
    return Acknowledgement(parse_principal(obj, "principal"), get_str(obj, "name", NAME_RE),
                           get_int(obj, "version", minimum=1), get_str(obj, "sha256", HASH_RE),
                           get_int(obj, "at", minimum=0), get_str(obj, "by", ACTOR_RE))
