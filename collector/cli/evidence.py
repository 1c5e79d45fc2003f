"""``timeclock-collector evidence``: one dated, signed evidence pack for an auditor
(collector.records.evidence; checked offline by ``timeclock-verify --evidence``)."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

from collector import CollectorError
from collector.cli.args import add_command
from collector.cli.ledger import _record_export, _v2_signer
from collector.cli.shared import store_of
from collector.ingest.checkpoints import load_log_key
from collector.records.evidence import build_pack
from collector.records.exports import parse_time
from wire.clock import now_us

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector evidence --store sqlite:///var/lib/timeclock/ledger.db \\
          --from 2026-10-01T00:00Z --to 2027-01-01T00:00Z \\
          --log-key /etc/timeclock/log.key --out ./evidence-2026-q4 \\
          --config /etc/timeclock/collector.toml \\
          --unit /lib/systemd/system/timeclock-collector.service
      timeclock-verify --evidence ./evidence-2026-q4.tar.gz --collector-key B64

    Writes the folder --out and --out.tar.gz (both 0600/0700): the audit bundle of the whole
    ledger, the collector's full verification, the period's registers (grants and the
    segregation-of-duties findings, access summary, reviews, alerts, quarantine, retention,
    holds and shredding, configuration), the control matrix, an HTML report with plots and,
    when Chromium is installed, its PDF; manifest.json lists every file's SHA-256 and
    manifest.sig is the log key's signature over it. --from/--to bound the registers (entry
    times, UTC, --to exclusive). The run leaves an access entry (who, why, what).
    """)
_SECRET = re.compile(r"^(\s*[\w.-]*(?:secret|password|passphrase|token|pin)[\w.-]*\s*=\s*)"
                     r"(?!\s*$).*$", re.IGNORECASE | re.MULTILINE)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "evidence", help="a signed evidence pack for an auditor",
                    epilog=EPILOG, func=cmd_evidence, config=False)
    p.add_argument("--from", dest="since", required=True, metavar="TIME",
                   help="start of the period (ISO 8601 with a UTC offset, or µs)")
    p.add_argument("--to", dest="until", required=True, metavar="TIME",
                   help="end of the period, exclusive")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="the pack folder to create (and DIR.tar.gz); must not exist")
    p.add_argument("--log-key", required=True, type=Path, metavar="FILE",
                   help="the log signing key: signs the manifest and a checkpoint of the "
                        "bundle's size")
    p.add_argument("--origin", metavar="ORIGIN", help="the log's origin (default: the "
                   "ledger's own)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="attach the collector's configuration (secret-looking values "
                        "redacted)")
    p.add_argument("--unit", type=Path, action="append", default=[], metavar="FILE",
                   help="attach a systemd unit (its hardening); repeatable")
    p.add_argument("--pdf", choices=("auto", "on", "off"), default="auto",
                   help="print report.pdf with headless Chromium (auto: when installed)")
    p.add_argument("--purpose", default="audit evidence", metavar="TEXT",
                   help="why the pack is made (recorded in the access entry)")


def _attachments(args: argparse.Namespace) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in [*([args.config] if args.config else []), *args.unit]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CollectorError(f"{path}: cannot attach ({e})") from e
        out[path.name] = _SECRET.sub(r'\1"<redacted>"', text).encode()
    return out


def cmd_evidence(args: argparse.Namespace) -> int:
    since, until = parse_time(args.since), parse_time(args.until)
    key = load_log_key(args.log_key)
    attachments = _attachments(args)
    with store_of(args) as store:
        signer = _v2_signer(store, argparse.Namespace(log_key=[args.log_key],
                                                      origin=args.origin))
        pack = build_pack(store, args.out, since=since, until=until, signing_key=key,
                          log_keys=[key.verify_key], now_us=now_us(), sign_checkpoint=signer,
                          attachments=attachments, pdf=args.pdf)
        _record_export(store, argparse.Namespace(purpose=args.purpose, format="evidence",
                                                 out=str(pack.archive), bundle=pack.archive),
                       what="evidence", rows=pack.files,
                       query={"since": since, "until": until, "evidence": True})
    print(f"evidence pack: {pack.files} files in {pack.directory} and {pack.archive}; the "
          f"store {'verified' if pack.ok else 'did NOT verify (see verify.json)'}",
          file=sys.stderr)
    return 0 if pack.ok else 1
