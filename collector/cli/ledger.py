"""``timeclock-collector verify | export | migrate | proof``: check, export and prepare a
ledger store, and print Merkle proofs from it (JSON, as the API serves them).

``--store`` takes ``sqlite:///path``, a plain path, or ``postgresql://…`` (a DSN with a
password is never printed in clear).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from collector import CollectorError
from collector.cli.args import add_kek_sources
from collector.cli.shared import ledger_kek, open_existing_store, store_of
from collector.ingest.checkpoints import load_log_key, make_checkpoint_v2, resolve_origin
from collector.ledger import access_tables, checkpoint_tables, sqlite_path
from collector.ledger.audit import (
    SAMPLE_DEFAULT,
    Progress,
    VerifyResult,
    load_state,
    save_state,
    verify_store,
)
from collector.ledger.base import EventFact
from collector.ledger.postgres import migrate, redact
from collector.ledger.schema_check import SchemaCheck, check_schema, restore_sqlite
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.tables import ensure_schema, migrate_postgres
from collector.people import directory
from collector.records import proofs
from collector.records.corrections import Corrections
from collector.records.export_fields import DEFAULT_SET, SETS, FieldSet, Pseudonyms, parse_list
from collector.records.exports import (
    FORMATS,
    ExportError,
    ExportSummary,
    export_bundle,
    export_payroll,
    parse_time,
    v2_covered,
)
from collector.records.payroll_proofs import export_payroll_with_proofs
from wire.clock import now_us as clock_now_us
from wire.errors import WireError
from wire.keys import VerifyKey

VERIFY_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector verify --store /var/lib/timeclock/ledger.db \\
          --log-key-pub Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=
      timeclock-collector verify --store postgresql://auditor@db/timeclock \\
          --log-key /etc/timeclock/log.key --full

    Reads entries and bodies exactly as stored and checks every hash, link, body, punch
    signature (under the key an earlier device entry registered), device chain and signed
    checkpoint. After a clean run it remembers the last verified checkpoint in --state, and
    the next run starts there; --full re-reads everything (do it after a restore: D16).
    An incremental run also re-checks --sample random older entries (unpredictable), and
    every run compares the append-only triggers and the connected role's grants with what
    `migrate` created (D5).
    Exit status: 0 clean, 1 tampering or schema drift found (the first failing idx or each
    drift finding is printed), 2 error.
    """)

EXPORT_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector export --store ledger.db --bundle /tmp/audit-2025q4 \\
          --log-key-pub Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=
      timeclock-collector export --store ledger.db --payroll --format csv \\
          --since 2025-11-01T00:00:00Z --until 2025-12-01T00:00:00Z --site hq --out nov.csv

    Payroll rows are filtered on device time (since inclusive, until exclusive) and carry
    the ledger index and entry hash of each punch; the header names the query, the ledger
    snapshot and the covering checkpoint; the trailer the row count and seq ranges.
    """)


PROOF_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector proof punch clock-0017 4711 --store /var/lib/timeclock/ledger.db
      timeclock-collector proof consistency --from 1000 --to 2000 --store URL

    punch: {"entry","punch_hash","leaf_index","inclusion_proof","checkpoint"}: the inclusion
    proof (RFC 9162, base64 hashes) leads to the root of the checkpoint note, which carries
    the log's signature and every cosignature gathered for it.
    consistency: {"tree_size_1","tree_size_2","consistency_path"}.
    Exit status: 0 printed, 2 no such punch, no checkpoint covering it, or sizes out of range.
    """)


def _add_store(p: argparse.ArgumentParser, *, kek: bool = True) -> None:
    p.add_argument("--store", required=True, metavar="URL",
                   help="ledger: sqlite:///path, a path, or postgresql://user@host/db")
    if kek:         # the KEK of an encrypted ledger: --kek > $TIMECLOCK_LEDGER_KEK > --config
        add_kek_sources(p)


def _add_log_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-key-pub", action="append", default=[], metavar="B64",
                   help="trusted collector log public key (base64); repeat for rotated keys")
    p.add_argument("--log-key", action="append", default=[], type=Path, metavar="FILE",
                   help="a log signing key file (0600); its public key is trusted")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = sub.add_parser("verify", help="verify a ledger store (hashes, signatures, checkpoints)",
                       description="Verify the ledger store in place, incrementally.",
                       epilog=VERIFY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_store(v)
    _add_log_keys(v)
    v.add_argument("--state", type=Path, metavar="FILE",
                   help="resume state (default: under $XDG_STATE_HOME/timeclock/verify/)")
    v.add_argument("--full", action="store_true", help="ignore the state; verify from idx 0")
    v.add_argument("--progress", action="store_true",
                   help="show progress on stderr even when it is not a terminal")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--sample", type=int, default=SAMPLE_DEFAULT, metavar="N",
                   help=f"older entries an incremental run re-checks at random "
                        f"(default {SAMPLE_DEFAULT}; 0: none)")
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser("export", help="export the audit bundle or a payroll extract",
                       description="Export from the ledger store, streaming.",
                       epilog=EXPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_store(e)
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", type=Path, metavar="DIR",
                      help="write the audit bundle (DESIGN.md §6) into DIR")
    what.add_argument("--payroll", action="store_true", help="write one row per punch")
    _add_log_keys(e)
    e.add_argument("--format", choices=FORMATS, default="csv", help="payroll format")
    e.add_argument("--since", help="device time from (ISO 8601 with offset, or µs)")
    e.add_argument("--until", help="device time before (ISO 8601 with offset, or µs)")
    e.add_argument("--site", help="only this site")
    e.add_argument("--device", help="only this device")
    e.add_argument("--out", type=Path, metavar="FILE", help="payroll file (default: stdout)")
    e.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    e.add_argument("--with-proofs", action="store_true",
                   help="payroll (NDJSON) rows carry their ledger entry and an inclusion proof "
                        "to the newest v2 checkpoint, whose note is in the header "
                        "(docs/protocol.md §13.3; verify with timeclock-verify --export)")
    e.add_argument("--origin", metavar="ORIGIN",
                   help="origin of the v2 checkpoint a bundle export makes with --log-key "
                        "(default: the origin of the ledger's checkpoints)")
    e.add_argument("--field-set", choices=tuple(SETS), default=DEFAULT_SET,
                   help="payroll fields by purpose (D20, docs/operations.md): payroll "
                        "(default: employee id, no badge credential), audit (+ key, reader), "
                        "investigation (+ credential)")
    e.add_argument("--pseudonym-key", type=Path, metavar="FILE",
                   help="the ledger's badge pseudonym key (made by init; [api] pseudonym_key): "
                        "rows of badges that resolve to no employee get badge_pseudonym")
    e.add_argument("--fields", metavar="A,B,...",
                   help="only these fields of the field set (e.g. employee_id,action,"
                        "device_time)")
    e.add_argument("--purpose", default="not stated", metavar="TEXT",
                   help="why the data leaves the system (recorded in the ledger, D20)")
    e.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="processes that check and format payroll rows side by side (default "
                        "0: one per CPU, at most 4; 1: this process only). The file is the "
                        "same byte for byte whatever N; a PKCS#11 KEK always uses one. "
                        "Trade-off: N workers go about N times as fast but each holds its "
                        "own data key cache, page cache and chunk of text (tens of MB more "
                        "memory on a keyed ledger); 1 is the low-memory option")
    e.set_defaults(func=cmd_export)

    pr = sub.add_parser("proof", help="print an inclusion or consistency proof (JSON)",
                        description="Merkle proofs from the stored tree, as the API serves "
                                    "them (docs/protocol.md §13.6).",
                        epilog=PROOF_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = pr.add_subparsers(dest="proof", metavar="KIND", required=True)
    pp = kinds.add_parser("punch", help="a punch's entry, inclusion proof and checkpoint")
    pp.add_argument("device", metavar="DEVICE")
    pp.add_argument("seq", type=int, metavar="SEQ")
    pp.add_argument("--size", type=int, metavar="N",
                    help="prove to the stored checkpoint of size N (default: the newest "
                         "covering the punch that carries a cosignature, else the newest)")
    _add_store(pp)
    pp.set_defaults(func=cmd_proof_punch)
    pc = kinds.add_parser("consistency", help="a consistency proof between two tree sizes")
    pc.add_argument("--from", dest="old", type=int, required=True, metavar="N",
                    help="older tree size (the checkpoint you hold)")
    pc.add_argument("--to", dest="new", type=int, metavar="M",
                    help="newer tree size (default: the newest checkpoint's)")
    _add_store(pc)
    pc.set_defaults(func=cmd_proof_consistency)

    m = sub.add_parser("migrate", help="create or update the ledger schema",
                       description="Create the ledger schema. On PostgreSQL run it as the "
                                   "owner role; --app-role gets INSERT/SELECT only.")
    _add_store(m)
    m.add_argument("--app-role", metavar="ROLE",
                   help="PostgreSQL role the collectors connect as (granted the minimum)")
    m.set_defaults(func=cmd_migrate)


def cmd_proof_punch(args: argparse.Namespace) -> int:
    with store_of(args) as store:
        checkpoint_tables.ensure_schema(store)
        doc = proofs.punch_proof(store, args.device, args.seq, size=args.size)
    print(json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False))
    return 0


def cmd_proof_consistency(args: argparse.Namespace) -> int:
    with store_of(args) as store:
        checkpoint_tables.ensure_schema(store)
        new = args.new if args.new is not None else proofs.newest_size(store)
        doc = proofs.consistency(store, args.old, new)
    print(json.dumps(doc, indent=1, sort_keys=True))
    return 0


def _log_keys(args: argparse.Namespace) -> dict[str, VerifyKey]:
    keys: dict[str, VerifyKey] = {}
    for b64 in args.log_key_pub:
        try:
            vk = VerifyKey.from_b64(b64)
        except WireError as e:
            raise CollectorError(f"--log-key-pub {b64[:12]}…: {e}") from e
        keys[vk.key_id] = vk
    for path in args.log_key:
        vk = load_log_key(path).verify_key
        keys[vk.key_id] = vk
    return keys


def default_state_path(url: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    path = sqlite_path(url)
    ident = str(path.resolve()) if path is not None else redact(url)
    return base / "timeclock" / "verify" / (hashlib.sha256(ident.encode()).hexdigest()[:16]
                                            + ".json")


def _progress_printer(stream: TextIO) -> Progress:
    def show(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        width = 30
        bar = "#" * (width * pct // 100)
        stream.write(f"\rverify [{bar:<{width}}] {done}/{total} entries ({pct}%)")
        if done >= total:
            stream.write("\n")
        stream.flush()
    return show


def _coverage(result: VerifyResult) -> str:
    """What a run covered (D5): read in full, sampled below the resume point, last full run."""
    last = ("never recorded" if result.last_full_us is None
            else datetime.fromtimestamp(result.last_full_us / 1e6, UTC).isoformat(
                timespec="seconds"))
    if result.resumed_from == 0:
        return f"coverage: every entry read (full run); last full run {last}"
    read = (f"idx {result.resumed_from}..{result.size - 1} read"
            if result.size > result.resumed_from else "no new entries")
    return (f"coverage: {read}, idx 0..{result.resumed_from - 1} attested by the verified "
            f"checkpoint and {result.sampled} of them re-checked at random; last full run {last}")


def _print_result(result: VerifyResult, schema: SchemaCheck, *, as_json: bool,
                  access: Sequence[str] = (), people: Sequence[str] = ()) -> None:
    r = result.report
    if as_json:
        out = r.to_dict()
        out["resumed_from"] = result.resumed_from
        out["uncovered"] = result.uncovered
        out["sampled"] = result.sampled
        out["last_full_us"] = result.last_full_us
        out["schema_findings"] = list(schema.findings)
        out["access_findings"] = list(access)
        out["directory_findings"] = list(people)
        print(json.dumps(out, indent=1, sort_keys=True))
        return
    span = f"idx {result.resumed_from}..{result.size - 1}" if result.size else "empty ledger"
    if r.ok:
        print(f"OK: {span} verified: {r.entries} entries, {r.punches} punches, "
              f"{r.devices} devices, {r.checkpoints} checkpoints; head {r.head}")
        if result.uncovered:
            print(f"  {result.uncovered} entries after the newest checkpoint are not signed "
                  f"yet (the next checkpoint covers them; a bundle export signs one)")
    else:
        print(f"TAMPERED: {span}: {r.first_failure}")
    shown = r.findings[:50]
    for f in shown:
        print(f"  {f}")
    if len(r.findings) > len(shown) or r.omitted:
        print(f"  … {len(r.findings) - len(shown) + r.omitted} more findings")
    print(f"  {_coverage(result)}")
    if not schema.ok:
        print(f"SCHEMA DRIFT: {len(schema.findings)} finding(s); re-run `timeclock-collector "
              f"migrate` as the owner role, then `verify --full`")
        for finding in schema.findings:
            print(f"  {finding}")
    if access:       # D8: rows of the access tables no access entry made (access_tables)
        print(f"ACCESS DRIFT: {len(access)} finding(s); the access tables differ from the "
              f"ledger's access entries (a row written behind the ledger)")
        for finding in access:
            print(f"  {finding}")
    if people:       # D6: the people directory's tables differ from its entries
        print(f"DIRECTORY DRIFT: {len(people)} finding(s); tc_employees / tc_badges differ "
              f"from the ledger's employee and badge entries (a row written behind the ledger)")
        for finding in people:
            print(f"  {finding}")


def cmd_verify(args: argparse.Namespace) -> int:
    keys = _log_keys(args)
    if not keys:
        raise CollectorError("verify needs the collector log public key: --log-key-pub B64 "
                             "or --log-key FILE")
    state_path: Path = args.state or default_state_path(args.store)
    with store_of(args) as store:
        # --full re-reads from idx 0 but still holds the state's checkpoint (issue 10)
        state = load_state(state_path)
        show = args.progress or sys.stderr.isatty()
        progress = _progress_printer(sys.stderr) if show else None
        if args.sample < 0:
            raise CollectorError(f"--sample {args.sample}: must be 0 or more")
        result = verify_store(store, keys, state=state, progress=progress, full=args.full,
                              sample=args.sample, now_us=clock_now_us())
        schema = check_schema(store)
        access = access_tables.check_projection(store) if access_tables.present(store) \
            else []
        people = directory.check_projection(store) if args.full else []
    if result.state is not None:
        save_state(state_path, result.state)
    _print_result(result, schema, as_json=args.json, access=access, people=people)
    return 0 if result.ok and schema.ok and not access and not people else 1


def cmd_export(args: argparse.Namespace) -> int:
    with store_of(args) as store:
        if args.bundle is not None:
            keys = _log_keys(args)
            if not keys:
                raise ExportError("a bundle lists the collector log key: pass --log-key-pub "
                                  "B64 or --log-key FILE")
            n = export_bundle(store, args.bundle, keys.values(), sign=_v2_signer(store, args))
            _record_export(store, args, what="bundle", rows=n, query={})
            print(f"audit bundle: {n} entries written to {args.bundle}", file=sys.stderr)
            if not v2_covered(store, n):
                print("warning: no v2 checkpoint covers the bundle's last entry (pass the log "
                      "signing key as --log-key FILE so the export makes one)", file=sys.stderr)
            return 0
        query = PunchQuery(
            since=None if args.since is None else parse_time(args.since),
            until=None if args.until is None else parse_time(args.until),
            site=args.site, device=args.device)
        now_us = clock_now_us()
        # Approved corrections are shown beside the untouched originals (D6).
        fixed = Corrections(store).applied_complete()
        if args.with_proofs and args.format != "ndjson":
            raise ExportError("--with-proofs needs --format ndjson (CSV rows carry no proofs)")
        fields = FieldSet.choose(args.field_set, parse_list(args.fields))
        pseudonyms = None if args.pseudonym_key is None else Pseudonyms.load(args.pseudonym_key)

        def write(out: TextIO) -> ExportSummary:
            if args.with_proofs:
                return export_payroll_with_proofs(store, out, query=query, now_us=now_us,
                                                  corrections=fixed, fields=fields,
                                                  pseudonyms=pseudonyms)
            return export_payroll(store, out, fmt=args.format, query=query, now_us=now_us,
                                  corrections=fixed, fields=fields, pseudonyms=pseudonyms,
                                  jobs=args.jobs)

        if args.out is None:
            summary = write(sys.stdout)
        else:
            try:
                f = _private_out(args.out, force=args.force)
            except FileExistsError as e:
                raise ExportError(f"{args.out}: exists; use --force to overwrite") from e
            except OSError as e:
                raise ExportError(f"{args.out}: {e.strerror}") from e
            try:
                with f:
                    summary = write(f)
            except BaseException as e:
                # Never leave a partial file that looks like an export (a row that failed
                # its check against the ledger, a full disk, an interrupt).
                with contextlib.suppress(OSError):
                    args.out.unlink()
                if isinstance(e, OSError):
                    raise ExportError(f"{args.out}: {e.strerror}") from e
                raise
        _record_export(store, args, what="payroll", rows=summary.rows, fields=fields,
                       query={k: v for k, v in (("since", query.since), ("until", query.until),
                                                ("site", query.site), ("device", query.device))
                              if v is not None})
    print(f"payroll: {summary.rows} rows ({summary.uncovered} beyond the latest checkpoint)",
          file=sys.stderr)
    return 0


def _v2_signer(store: SQLStore, args: argparse.Namespace) -> Callable[[int], object] | None:
    """With a log signing key (--log-key FILE), make a v2 checkpoint of a bundle's size under
    --origin (default: the ledger's own origin, see collector.ingest.checkpoints)."""
    if not args.log_key:
        return None
    key = load_log_key(args.log_key[0])
    checkpoint_tables.ensure_schema(store)
    stored = checkpoint_tables.newest(store)
    origin = resolve_origin(args.origin or (stored.checkpoint.origin if stored else None),
                            store, key)

    def sign(size: int) -> object:
        return make_checkpoint_v2(store, key, origin, size, clock_now_us())
    return sign


def _private_out(path: Path, *, force: bool) -> TextIO:
    """A new export file (``force``: or one emptied), 0600 whatever the umask: an export holds
    personal data (issue 12 item 6). FileExistsError without ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w", newline="")


def _record_export(store: SQLStore, args: argparse.Namespace, *, what: str, rows: int,
                   query: dict[str, Any], fields: FieldSet | None = None) -> None:
    """Output control (D20): every export leaves an ``access`` entry naming who, why, what."""
    body = {"type": "export", "via": "cli", "principal": f"os:{getpass.getuser()}",
            "what": what, "purpose": args.purpose, "query": query, "rows": rows,
            "format": "bundle" if what == "bundle" else args.format,
            "fields": [] if fields is None else fields.names(),
            "field_set": None if fields is None else fields.set_name,
            "out": "stdout" if what == "payroll" and args.out is None
            else str(args.bundle if what == "bundle" else args.out)}
    store.append([EventFact("access", body)], now_us=clock_now_us())


def cmd_migrate(args: argparse.Namespace) -> int:
    if sqlite_path(args.store) is None:
        migrate(args.store, app_role=args.app_role)
        # Principals, tokens and corrections live beside the ledger (not in the chain).
        migrate_postgres(args.store, args.app_role)
        checkpoint_tables.migrate_postgres(args.store, args.app_role)
    else:
        s = open_existing_store(args.store, kek=ledger_kek(args), create=True)
        try:
            checkpoint_tables.ensure_schema(s)
            ensure_schema(s)        # the access tables, their entry columns and triggers
        finally:
            s.close()
        path = sqlite_path(args.store)
        restored = restore_sqlite(path) if path is not None else []
        if restored:        # D5: a dropped or edited append-only trigger is put back
            print(f"restored trigger(s): {', '.join(restored)}; now run `timeclock-collector "
                  f"verify --full`", file=sys.stderr)
    print(f"ledger schema ready: {redact(args.store)}", file=sys.stderr)
    return 0
