"""``timeclock-collector token …`` and ``access-review``: API principals, roles and tokens
(controls D7, D8).

Tokens are printed once and stored only as SHA-256 hashes; every change (and every refused
change, e.g. a segregation-of-duties violation) is an ``access`` entry in the ledger, with
the acting OS user as ``cli:<user>``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from collector.access.directory import Principals
from collector.access.principals import ROLES, parse_sites
from collector.access.tokens import parse_duration_days
from collector.cli.args import add_kek_sources
from collector.cli.shared import open_args_store
from collector.ledger.access_tables import GrantRow
from wire.clock import now_us
from wire.grants import UNSCOPED, PrincipalScope

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector token create --store ledger.db --principal alice --role hr.read \\
          --role hr.correct --expires 90d
      timeclock-collector token create --store ledger.db --principal alice   # another token
      timeclock-collector token list --store ledger.db
      timeclock-collector token revoke --store ledger.db tok-1a2b3c4d5e6f
      timeclock-collector token cert --store ledger.db --principal payroll.acme \\
          --role payroll.export        # client certificates with CN payroll.acme
      timeclock-collector token roles --store ledger.db --principal bob --role hr.approve
      timeclock-collector token principal --store ledger.db --principal carol \
          --role employee.self --role supervisor --employee E-1042     # a person
      timeclock-collector token roles --store ledger.db --principal dana --role hr.read \
          --sites plant-2                       # the HR officer of one site
      timeclock-collector token disable --store ledger.db --principal mallory   # leaver
      timeclock-collector token grants --store ledger.db            # pending grants
      timeclock-collector token approve --store ledger.db grt-1a2b3c4d5e6f

    No one obtains a credential for another principal: `token create` (the host
    operator) creates principals only while the ledger has no admin yet (bootstrap), and
    otherwise hands over only the FIRST token of a principal an admin created; every later
    token is issued by the principal itself (POST /v1/tokens). Once an admin exists, a
    change that gives a principal a punch-data role (hr.*, payroll.export) is a pending
    grant until a second, different admin (or operator) approves it.

    roles:
    """) + "\n".join(f"      {k:15} {v}" for k, v in ROLES.items()) + textwrap.dedent("""

    Segregation of duties is enforced: nobody holds both hr.correct and hr.approve (or
    supervisor), and admin holds no hr.*, payroll, employee.self or supervisor role.
    --employee links a principal to a person of the people directory, --sites limits all
    its roles to sites; widening either for a punch-data role needs a second admin too.
    The token is printed once; keep it in a secret store. Clients send it as
    `Authorization: Bearer <token>`.
    """)

REVIEW_EPILOG = textwrap.dedent("""\
    example:
      timeclock-collector access-review --store ledger.db --unused-days 90 [--json]

    Lists every enabled principal with its roles, last use and active tokens, and flags
    access unused for N days (revoke it with `token disable` or `token roles`), and every
    row of the access tables that no ledger entry made (ACCESS DRIFT: written behind the
    ledger, it never authenticates). Exit status is 0 when nothing is flagged, 1 otherwise.
    """)


def _store_arg(q: argparse.ArgumentParser) -> None:
    q.add_argument("--store", required=True, metavar="URL",
                   help="ledger: sqlite:///path, a path, or postgresql://… (its database "
                        "also holds the principals)")
    add_kek_sources(q)


def _scope_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--employee", metavar="EMPLOYEE_ID",
                   help="the person of the people directory this principal is (employee.self "
                        "and supervisor need one; `none` unlinks)")
    q.add_argument("--sites", metavar="S1,S2",
                   help="limit every role to these sites (`all`: every site, the default)")


def _scope(args: argparse.Namespace, current: PrincipalScope | None) -> PrincipalScope | None:
    """The scope --employee/--sites ask for over ``current`` (None: neither was given)."""
    if args.employee is None and args.sites is None:
        return None
    base = current or PrincipalScope()
    emp = base.employee if args.employee is None else (
        None if args.employee == "none" else args.employee)
    sites = base.sites if args.sites is None else parse_sites(args.sites)
    return PrincipalScope(emp, sites)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="API principals, roles and bearer tokens",
                       description="Issue, list and revoke API tokens; register client-"
                                   "certificate principals; set roles.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    c = tsub.add_parser("create", help="issue a token (printed once)")
    _store_arg(c)
    c.add_argument("--principal", required=True, help="who the token is for (one person "
                                                      "or system; no shared accounts)")
    c.add_argument("--role", action="append", default=[], choices=sorted(ROLES),
                   help="role of a NEW principal (repeat); existing principals keep theirs")
    c.add_argument("--expires", default="90d", metavar="DAYS",
                   help="lifetime: 90d, 12w or days (≤ 365; default 90d)")
    c.set_defaults(func=cmd_create)

    ls = tsub.add_parser("list", help="principals, roles and tokens (never the tokens)")
    _store_arg(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    r = tsub.add_parser("revoke", help="revoke one token by id")
    _store_arg(r)
    r.add_argument("token_id", metavar="TOKEN_ID", help="id from `token list` (tok-…)")
    r.set_defaults(func=cmd_revoke)

    ce = tsub.add_parser("cert", help="accept client certificates with CN = principal")
    _store_arg(ce)
    ce.add_argument("--principal", required=True, help="the certificate CN")
    ce.add_argument("--role", action="append", default=[], choices=sorted(ROLES),
                    required=True, help="role (repeat)")
    ce.set_defaults(func=cmd_cert)

    ro = tsub.add_parser("roles", help="replace a principal's roles")
    _store_arg(ro)
    ro.add_argument("--principal", required=True)
    ro.add_argument("--role", action="append", default=[], choices=sorted(ROLES),
                    help="role (repeat; none = no access)")
    ro.set_defaults(func=cmd_roles)

    pr = tsub.add_parser("principal", help="create a principal without a credential")
    _store_arg(pr)
    pr.add_argument("--principal", required=True)
    pr.add_argument("--kind", choices=("token", "cert"), default="token")
    pr.add_argument("--role", action="append", default=[], choices=sorted(ROLES),
                    required=True, help="role (repeat)")
    pr.set_defaults(func=cmd_principal)

    for q in (c, ce, ro, pr):
        _scope_args(q)

    g = tsub.add_parser("grants", help="pending grants (dual control)")
    _store_arg(g)
    g.set_defaults(func=cmd_grants)

    for name, approve in (("approve", True), ("reject", False)):
        ap = tsub.add_parser(name, help=f"{name} a pending grant (never your own request)")
        _store_arg(ap)
        ap.add_argument("grant_id", metavar="GRANT_ID", help="id from `token grants` (grt-…)")
        ap.set_defaults(func=cmd_decide, approve=approve)

    d = tsub.add_parser("disable", help="disable a principal and revoke all its tokens")
    _store_arg(d)
    d.add_argument("--principal", required=True)
    d.set_defaults(func=cmd_disable)

    # `access-review` (cmd_review below, and the periodic review) is registered by
    # collector.cli.access_review


def _now() -> int:
    return now_us()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@contextmanager
def _principals(args: argparse.Namespace) -> Iterator[Principals]:
    """The principals of ``--store``; the store is closed when the command is done."""
    store = open_args_store(args)     # a typo must not make a new, empty ledger
    try:
        yield Principals(store)            # creates the access tables in a SQLite ledger
    finally:
        store.close()


def _when(us: int | None) -> str:
    if us is None:
        return "never"
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_create(args: argparse.Namespace) -> int:
    days = parse_duration_days(args.expires)
    with _principals(args) as principals:
        issued = principals.create_token(args.principal, args.role, expires_days=days,
                                         actor=_actor(), now_us=_now(),
                                         scope=_scope(args, None) or UNSCOPED)
    print(issued.token)
    print(f"token {issued.record.id} for {issued.record.principal}, expires "
          f"{_when(issued.record.expires_at)}; it is shown only now", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    now = _now()
    with _principals(args) as principals:
        items = [{**p.to_dict(), "tokens": [t.to_dict(now) for t in principals.tokens(p.name)]}
                 for p in principals.all()]
    if args.json:
        print(json.dumps(items, indent=2, sort_keys=True))
        return 0
    for it in items:
        state = " (disabled)" if it["disabled_at"] is not None else ""
        scope = "".join([f"; employee {it['employee']}" if it["employee"] else "",
                         f"; sites {', '.join(it['sites'])}" if it["sites"] else ""])
        print(f"{it['name']} [{it['kind']}]{state} roles: {', '.join(it['roles']) or '-'}"
              f"{scope}; last used {_when(it['last_used_at'])}")
        for t in it["tokens"]:
            print(f"    {t['id']} {t['status']:8} expires {_when(t['expires_at'])} "
                  f"last used {_when(t['last_used_at'])}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _principals(args) as principals:
        t = principals.revoke_token(args.token_id, actor=_actor(), now_us=_now())
    print(f"revoked {t.id} of {t.principal}")
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    with _principals(args) as principals:
        p = principals.register_cert(args.principal, args.role, actor=_actor(), now_us=_now(),
                                     scope=_scope(args, None) or UNSCOPED)
    print(f"client certificates with CN {p.name} now act as {p.name} "
          f"({', '.join(sorted(p.roles))})")
    return 0


def _pending(g: GrantRow) -> str:
    return (f"PENDING grant {g.id}: {g.principal} gets {', '.join(sorted(g.roles))} only when "
            f"a second admin approves it (`token approve {g.id}` or POST "
            f"/v1/grants/{g.id}/approve), requested by {g.requested_by}")


def cmd_roles(args: argparse.Namespace) -> int:
    with _principals(args) as principals:
        cur = principals.get(args.principal)
        p = principals.set_roles(args.principal, args.role, actor=_actor(), now_us=_now(),
                                 scope=_scope(args, None if cur is None else cur.scope))
    if isinstance(p, GrantRow):
        print(_pending(p))
        return 0
    print(f"{p.name}: {', '.join(sorted(p.roles)) or 'no roles'} ({p.scope.describe()})")
    return 0


def cmd_principal(args: argparse.Namespace) -> int:
    with _principals(args) as principals:
        p, g = principals.create_principal(args.principal, args.kind, args.role,
                                           actor=_actor(), now_us=_now(),
                                           scope=_scope(args, None) or UNSCOPED)
    print(f"{p.name} [{p.kind}]: {', '.join(sorted(p.roles)) or 'no roles'} now")
    if g is not None:
        print(_pending(g))
    return 0


def cmd_grants(args: argparse.Namespace) -> int:
    with _principals(args) as principals:
        for g in principals.pending_grants():
            print(_pending(g))
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    with _principals(args) as principals:
        g = principals.decide_grant(args.grant_id, approve=args.approve, actor=_actor(),
                                    now_us=_now())
    print(f"grant {g.id} {g.status} by {g.decided_by}: {g.principal} "
          f"{', '.join(sorted(g.roles))}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    with _principals(args) as principals:
        principals.disable(args.principal, actor=_actor(), now_us=_now())
    print(f"{args.principal}: disabled, tokens revoked")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    if not 1 <= args.unused_days <= 3650:
        print("timeclock-collector: error: --unused-days must be 1…3650", file=sys.stderr)
        return 2
    with _principals(args) as principals:
        rows = principals.review(unused_days=args.unused_days, now_us=_now())
        drift = principals.drift()
    flagged = [r for r in rows if r.unused]
    if args.json:
        print(json.dumps({"unused_days": args.unused_days, "drift": drift,
                          "items": [r.to_dict() for r in rows]}, indent=2, sort_keys=True))
    else:
        for finding in drift:
            print(f"ACCESS DRIFT   {finding}")
        for r in rows:
            flag = f"UNUSED ≥{args.unused_days}d" if r.unused else "ok"
            print(f"{flag:14} {r.principal} [{r.kind}] roles: {', '.join(r.roles) or '-'}; "
                  f"last used {_when(r.last_used_at)}; active tokens {r.active_tokens}")
        print(f"{len(rows)} principals, {len(flagged)} flagged")
    return 1 if flagged or drift else 0
