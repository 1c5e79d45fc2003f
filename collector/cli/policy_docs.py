"""``timeclock-collector policy-doc …``: policy documents versioned by hash on the ledger and
their acknowledgement (issue 13 item 9; docs/operations.md "Policy documents and
acknowledgements"; the rules are collector.access.policy_docs).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from collector.access import policy_docs
from collector.cli.args import add_store
from collector.cli.shared import access_store as _store
from collector.cli.shared import cli_actor as _actor
from collector.cli.shared import config_section
from wire.clock import now_us

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector policy-doc publish --store ledger.db docs/policies/access-control.md
      timeclock-collector policy-doc list --store ledger.db
      timeclock-collector policy-doc acknowledge --store ledger.db --principal alice \\
          --name access-control          # recorded as cli:<you> on alice's behalf
      timeclock-collector policy-doc due --store ledger.db --config collector.toml [--json]

    publish records name (default: the file's stem), version (1, 2, … per name) and SHA-256
    of the file's bytes. Principals with punch-data roles need an acknowledgement of the
    current version of every required document ([policies] required; default every
    published one) younger than [policies] max_ack_age_days; the API refuses them with a
    403 naming the document until then. `due` exits 1 when anyone is due.
    """)

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy-doc", help="policy documents and acknowledgements",
                       description="Publish policy documents by hash; record and report "
                                   "acknowledgements.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    pub = psub.add_parser("publish", help="record a document's bytes as its next version")
    add_store(pub)
    pub.add_argument("path", type=Path, metavar="FILE")
    pub.add_argument("--name", help="document name (default: the file's stem)")
    pub.add_argument("--title", help="a title to record with it")
    pub.set_defaults(func=cmd_publish)

    ls = psub.add_parser("list", help="current documents")
    add_store(ls)
    ls.set_defaults(func=cmd_list)

    a = psub.add_parser("acknowledge", help="record a principal's acknowledgement")
    add_store(a)
    a.add_argument("--principal", required=True)
    a.add_argument("--name", required=True, help="document name")
    a.add_argument("--sha256", help="the version read (must be the current one)")
    a.set_defaults(func=cmd_acknowledge)

    d = psub.add_parser("due", help="who must (re-)acknowledge which document")
    add_store(d, config=False)
    d.add_argument("--config", type=Path, metavar="TOML", help="collector config: [policies]")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_due)


def cmd_publish(args: argparse.Namespace) -> int:
    with _store(args) as store:
        pub = policy_docs.publish(store, args.path, by=_actor(), now_us=now_us(),
                                  name=args.name, title=args.title)
    print(f"{pub.doc.name} v{pub.doc.version} sha256 {pub.doc.sha256} ({pub.doc.size} bytes) "
          f"published (entry {pub.idx})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        docs = policy_docs.documents(store)
    for d in docs:
        print(f"{d['name']} v{d['version']} sha256 {d['sha256']} (entry {d['idx']})")
    print(f"{len(docs)} documents")
    return 0


def cmd_acknowledge(args: argparse.Namespace) -> int:
    with _store(args) as store:
        idx, ack = policy_docs.acknowledge(store, args.principal, args.name, by=_actor(),
                                           now_us=now_us(), sha256=args.sha256)
    print(f"{args.principal} acknowledged {ack.name} v{ack.version} (entry {idx})")
    return 0


def cmd_due(args: argparse.Namespace) -> int:
    settings = (policy_docs.PolicySettings() if args.config is None
                else config_section(args.config, "policies", policy_docs.read_policies_section))
    with _store(args) as store:
        rows = policy_docs.due(store, settings, now_us=now_us())
    if args.json:
        print(json.dumps({"max_ack_age_days": settings.max_ack_age_days,
                          "items": [r.to_dict() for r in rows]}, indent=2, sort_keys=True))
    else:
        for r in rows:
            print(f"DUE  {r.principal} [{', '.join(r.roles)}] {r.name}: {r.problem}")
        print(f"{len(rows)} acknowledgements due")
    return 1 if rows else 0
