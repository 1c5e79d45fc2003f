"""Evidence pack: one dated archive an auditor takes away and checks offline (issue 16 item 3).

``timeclock-collector evidence --from … --to …`` writes a folder and a ``.tar.gz`` of it:

    bundle/            the audit bundle of the whole ledger (timeclock-verify checks it)
    verify.json        the collector's own full verification of the store when the pack was made
    registers/         what happened in the period, from the ledger's entries:
      grants.json        every principal, role and credential change (whole history) and the
                         segregation-of-duties findings the verification re-derived
      access.json        access-log summary (requests by principal, route and status; exports)
      reviews.json       review entries (alert acknowledgements, resolutions, sign-offs)
      alerts.json        alerts with the reviews that name them
      quarantine.json    rejections by reason
      retention.json     policies, holds, retention and shred entries (whole history)
      configuration.json remote configuration entries; the collector's config and unit
                         hardening when given
      hr-deliveries.json the HR webhook's delivery record: every ``hr-delivery`` and
                         ``hr-delivery-failed`` entry of the period (what — punches, timecards,
                         amendments —, when, to which endpoint and host, acknowledged or not,
                         attempts, the idempotency key)
      witnesses.json     witness status when the pack was made: the newest v2 checkpoint and
                         each witness's latest cosignature (size, line, when received) and
                         whether it is current (cosigned that newest checkpoint)
    controls.json      the control matrix (SOC 2 TSC, HIPAA §164) pointing at each artefact
    report.html        the human-readable report with plots (SVG, rendered here)
    report.pdf         the same, printed by headless Chromium (when it is installed)
    manifest.json      pack kind, period, ledger size and head, and the SHA-256 of every file
    manifest.sig       Ed25519 signature by the log key over
                       ``b"timeclock/evidence-pack/v1\\n" + canonical(manifest)``

``timeclock-verify --evidence PACK --collector-key B64`` (wire/evidence.py) checks the
signature, every file's hash, that no file was added or removed, the bundle itself, and that
the delivery record and the witness status agree with the bundle's entries and checkpoint
notes and with the summary the signed manifest carries (``hr_deliveries``, ``witnesses``).
The registers carry employee ids and principal names, never badge credentials or names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from collector import CollectorError
from collector.ledger import checkpoint_tables
from collector.ledger.audit import verify_store
from collector.ledger.sqlbase import SQLStore
from collector.records.exports import export_bundle
from collector.records.plots import svg_bars
from wire.canonical import canonical
from wire.evidence import (
    HR_FIELDS,
    HR_TYPES,
    MANIFEST,
    PACK_KIND,
    SIGNATURE,
    hr_summary,
    signed_message,
    witness_summary,
)
from wire.keys import SigningKey, VerifyKey

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-pdf-header-footer")
MAX_LISTED = 500        # register rows listed in full; the rest are counted


class EvidenceError(CollectorError):
    """An evidence pack cannot be made (period, output folder, signing key, PDF printer)."""


# The control matrix: our control ids (docs/compliance.md) -> criteria and the pack's artefacts.
CONTROLS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("D1", "CC6.1, CC6.6", "§164.312(d)", ("bundle/", "registers/configuration.json")),
    ("D2", "CC6.6, CC7.1", "§164.312(c)(1)", ("bundle/", "registers/quarantine.json")),
    ("D4", "A1.2", "§164.308(a)(7)", ("verify.json",)),
    ("D5", "PI1.4, CC7.1", "§164.312(c)(1), §164.312(c)(2)",
     ("bundle/", "verify.json", "registers/witnesses.json")),
    ("D6", "PI1.5", "§164.312(c)(1)", ("bundle/", "registers/grants.json")),
    ("D7", "CC6.1", "§164.312(d)", ("registers/access.json",)),
    ("D8", "CC6.2, CC6.3", "§164.308(a)(4)", ("registers/grants.json",)),
    ("D12", "CC7.2", "§164.312(b)", ("registers/access.json",)),
    ("D13", "CC7.3, CC7.4", "§164.308(a)(1)(ii)(D)",
     ("registers/alerts.json", "registers/reviews.json")),
    ("D15", "C1.2, P4.3", "§164.316(b)(2)", ("registers/retention.json",)),
    ("D20", "C1.1, P4.1", "§164.502(b)",
     ("registers/access.json", "registers/hr-deliveries.json")),
)


@dataclass(frozen=True, slots=True)
class Pack:
    directory: Path
    archive: Path
    files: int
    ok: bool                 # the store verified when the pack was made


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="seconds")


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class _Registers:
    """One pass over the ledger's entries, keeping what each register needs."""

    def __init__(self, since: int, until: int) -> None:
        self.since, self.until = since, until
        self.grants: list[dict[str, Any]] = []
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.unauthenticated = 0
        self.exports: list[dict[str, Any]] = []
        self.reviews: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.rejections: Counter[str] = Counter()
        self.retention: list[dict[str, Any]] = []
        self.config: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.punches_per_day: Counter[str] = Counter()
        self.alerts_per_day: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.removed_bodies = 0

    def take(self, idx: int, kind: str, at: int, body: bytes | None) -> None:
        inside = self.since <= at < self.until
        if body is None:
            self.removed_bodies += 1
            return
        try:
            b = json.loads(body)
        except ValueError:
            return
        if not isinstance(b, dict):
            return
        if kind == "access" and b.get("type") == "admin":
            self.grants.append({"idx": idx, "at": _iso(at), **{
                k: b[k] for k in ("actor", "action", "principal", "roles", "token_id",
                                  "approved_by", "sites", "employee_id") if k in b}})
        elif kind in ("policy", "hold", "retention", "shred"):
            self.retention.append({"idx": idx, "kind": kind, "at": _iso(at), "body": b})
        if not inside:
            return
        self.kinds[kind] += 1
        day = _iso(at)[:10]
        if kind == "punch":
            self.punches_per_day[day] += 1
        elif kind == "access":
            self._access(idx, at, b)
        elif kind == "review":
            self.reviews.append({"idx": idx, "at": _iso(at), "body": b})
        elif kind == "alert":
            self.alerts_per_day[day] += 1
            self.alerts.append({"idx": idx, "at": _iso(at), "kind": b.get("alert"),
                                "severity": b.get("severity"), "device": b.get("device"),
                                "detail": b.get("detail")})
        elif kind == "rejection":
            self.rejections[str(b.get("reason", "unknown"))] += 1
        elif kind == "config":
            self.config.append({"idx": idx, "at": _iso(at), "body": b})

    def _access(self, idx: int, at: int, b: dict[str, Any]) -> None:
        t = b.get("type")
        if t in HR_TYPES:
            self.deliveries.append({"idx": idx, "at": _iso(at), "acknowledged": t == HR_TYPES[0],
                                    **{k: b[k] for k in HR_FIELDS if k in b}})
            return
        if t == "request":
            self.requests[(str(b.get("principal")), str(b.get("route")),
                           str(b.get("status")))] += int(b.get("count", 1) or 1)
        elif t == "unauthenticated":
            self.unauthenticated += int(b.get("count", 1) or 1)
        elif t == "export":
            self.exports.append({"idx": idx, "at": _iso(at), **{
                k: b[k] for k in ("via", "principal", "what", "purpose", "rows", "format",
                                  "field_set") if k in b}})


def _listed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"count": len(rows), "listed": rows[:MAX_LISTED],
            "omitted": max(0, len(rows) - MAX_LISTED)}


REPORT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evidence pack {{ meta.from }} – {{ meta.to }}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:52em}table{border-collapse:collapse}
td,th{border:1px solid #999;padding:2px 6px;font-size:90%}h2{margin-top:1.5em}</style></head>
<body>
<h1>timeclock evidence pack</h1>
<p>Period {{ meta.from }} to {{ meta.to }} (UTC, end exclusive); made {{ meta.generated_at }};
ledger size {{ meta.ledger.size }}, head <code>{{ meta.ledger.head[:16] }}…</code>.</p>
<h2>Verification</h2><p><strong>{{ verdict }}</strong></p>
<p>Segregation-of-duties findings re-derived from the grant history: {{ sod|length }}.</p>
<p>Re-perform offline: <code>timeclock-verify --evidence PACK --collector-key B64</code>.</p>
<h2>Activity</h2>
{{ punch_plot }}
{{ alert_plot }}
<p>Entries in the period by kind:
{% for k, v in kinds %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}.
</p>
<h2>Alerts ({{ regs.alerts|length }}) and reviews ({{ regs.reviews|length }})</h2>
<table><tr><th>idx</th><th>at</th><th>kind</th><th>severity</th><th>reviews</th></tr>
{% for a in regs.alerts[:50] %}<tr><td>{{ a.idx }}</td><td>{{ a.at }}</td><td>{{ a.kind }}</td>
<td>{{ a.severity }}</td><td>{{ a.reviews|join(", ") }}</td></tr>{% endfor %}</table>
<h2>Quarantine</h2><ul>
{% for r, n in rejections %}<li>{{ r }}: {{ n }}</li>{% else %}<li>no rejections</li>{% endfor %}
</ul>
<h2>Access</h2><p>{{ requests }} authenticated requests, {{ regs.unauthenticated }}
unauthenticated or failed, {{ regs.exports|length }} exports.</p>
<h2>HR webhook deliveries ({{ regs.deliveries|length }})</h2>
<p>{{ hr.acknowledged }} acknowledged, {{ hr.failed }} given up (each an entry of the ledger).</p>
<table><tr><th>idx</th><th>at</th><th>endpoint</th><th>host</th><th>what</th><th>acknowledged</th>
<th>attempts</th></tr>
{% for d in regs.deliveries[:50] %}<tr><td>{{ d.idx }}</td><td>{{ d.at }}</td>
<td>{{ d.endpoint }}</td><td>{{ d.host }}</td><td>{{ d.what or "punches" }}</td>
<td>{{ "yes" if d.acknowledged else "NO" }}</td><td>{{ d.attempts }}</td></tr>{% endfor %}</table>
<h2>Witnesses</h2>
<p>Newest checkpoint when the pack was made: {% if wit.newest_checkpoint %}size
{{ wit.newest_checkpoint.size }}{% else %}none{% endif %}.</p>
<table><tr><th>witness</th><th>latest cosigned size</th><th>received</th><th>current</th></tr>
{% for w in wit.witnesses %}<tr><td>{{ w.name }}</td><td>{{ w.latest_size }}</td>
<td>{{ w.received_at }}</td>
<td>{% if w.current %}yes{% else %}NO (behind by {{ w.behind_entries }} entries){% endif %}</td>
</tr>
{% else %}<tr><td colspan="4">no witness has cosigned a checkpoint</td></tr>{% endfor %}</table>
<h2>Retention, holds and shredding</h2><p>{{ regs.retention|length }} entries (whole
history).</p>
<h2>Control matrix</h2>
<table><tr><th>control</th><th>SOC 2 TSC</th><th>HIPAA</th><th>artefacts</th></tr>
{% for c, t, h, a in controls %}<tr><td>{{ c }}</td><td>{{ t }}</td><td>{{ h }}</td>
<td>{{ a|join(", ") }}</td></tr>{% endfor %}</table>
</body></html>
""")


def _report_html(meta: dict[str, Any], regs: _Registers, verify: dict[str, Any],
                 sod: list[str], witnesses: dict[str, Any]) -> str:
    first = verify.get("first_failure")
    verdict = "OK: every entry, body, signature, chain and checkpoint verifies" if first is None \
        else f"FAILED at idx {first.get('idx')}: {first.get('message')}"
    return REPORT.render(
        meta=meta, regs=regs, verdict=verdict, sod=sod, controls=CONTROLS,
        hr=meta["hr_deliveries"], wit=witnesses,
        kinds=sorted(regs.kinds.items()), rejections=sorted(regs.rejections.items()),
        requests=sum(regs.requests.values()),
        punch_plot=Markup(svg_bars("punches per day", dict(regs.punches_per_day))),  # noqa: S704 - built with html.escape
        alert_plot=Markup(svg_bars("alerts per day", dict(regs.alerts_per_day))))  # noqa: S704 - built with html.escape


def print_pdf(html_path: Path, pdf_path: Path, *, chromium: str) -> None:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium (offline: a file URL)."""
    with tempfile.TemporaryDirectory(prefix="tc-evidence-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603 - our own argv
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EvidenceError(f"printing the report with {chromium} failed: {e}") from e
    if r.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        raise EvidenceError(f"printing the report with {chromium} failed (exit "
                            f"{r.returncode}): {r.stderr.strip()[-300:]}")
    pdf_path.chmod(0o600)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build_pack(store: SQLStore, out: Path, *, since: int, until: int, signing_key: SigningKey,
               log_keys: Iterable[VerifyKey], now_us: int,
               sign_checkpoint: Callable[[int], object] | None = None,
               attachments: dict[str, bytes] | None = None, pdf: str = "auto") -> Pack:
    """Write the pack folder ``out`` (must not exist) and ``out`` + ``.tar.gz``.

    ``attachments``: more files for ``registers/configuration/`` (the collector's config, unit
    files), already redacted by the caller. ``pdf``: ``auto`` (print when Chromium is
    installed), ``on`` (fail without it) or ``off``."""
    if until <= since:
        raise EvidenceError(f"the period must end after it starts ({_iso(since)} .. "
                            f"{_iso(until)})")
    archive = out.with_name(out.name + ".tar.gz")
    for p in (out, archive):
        if p.exists():
            raise EvidenceError(f"{p}: exists; choose a new --out (a pack is never rewritten)")
    chromium = find_chromium() if pdf != "off" else None
    if pdf == "on" and chromium is None:
        raise EvidenceError("--pdf on: no chromium found (apt install chromium)")
    out.mkdir(mode=0o700, parents=True)
    keys = list(log_keys)
    witnesses = witness_status(store)      # before the bundle signs a checkpoint of its own
    size = export_bundle(store, out / "bundle", keys, sign=sign_checkpoint)
    for f in (out / "bundle").iterdir():
        f.chmod(0o600)
    result = verify_store(store, {k.key_id: k for k in keys}, full=True, now_us=now_us)
    verify = result.report.to_dict()
    sod = [f["message"] for f in verify.get("findings", [])
           if "segregation of duties" in str(f.get("message", ""))]
    _write(out / "verify.json", _json(verify))
    regs = _Registers(since, until)
    for se in store.entries(0, size):
        regs.take(se.entry.idx, se.entry.kind, se.entry.at, se.body)
    by_alert: dict[int, list[int]] = defaultdict(list)
    for r in regs.reviews:
        target = r["body"].get("alert_idx")
        if isinstance(target, int):
            by_alert[target].append(r["idx"])
    for a in regs.alerts:
        a["reviews"] = by_alert.get(a["idx"], [])
    reg = out / "registers"
    _write(reg / "grants.json", _json({"changes": _listed(regs.grants),
                                       "segregation_of_duties_findings": sod}))
    _write(reg / "access.json", _json({
        "requests": [{"principal": p, "route": r, "status": s, "count": n}
                     for (p, r, s), n in sorted(regs.requests.items())],
        "unauthenticated_or_failed": regs.unauthenticated,
        "exports": _listed(regs.exports)}))
    _write(reg / "reviews.json", _json(_listed(regs.reviews)))
    _write(reg / "alerts.json", _json(_listed(regs.alerts)))
    _write(reg / "quarantine.json", _json({"rejections_by_reason": dict(
        sorted(regs.rejections.items()))}))
    _write(reg / "retention.json", _json({**_listed(regs.retention),
                                          "entries_without_body": regs.removed_bodies}))
    _write(reg / "configuration.json", _json(_listed(regs.config)))
    hr = hr_summary(regs.deliveries)
    _write(reg / "hr-deliveries.json", _json({
        **hr, "endpoints": sorted({str(d.get("endpoint")) for d in regs.deliveries}),
        **_listed(regs.deliveries)}))
    _write(reg / "witnesses.json", _json(witnesses))
    for name, data in sorted((attachments or {}).items()):
        _write(reg / "configuration" / Path(name).name, data)
    _write(out / "controls.json", _json([
        {"control": c, "soc2_tsc": t, "hipaa": h, "artefacts": list(a)}
        for c, t, h, a in CONTROLS]))
    head = store.head()
    meta = {"pack": PACK_KIND, "from": _iso(since), "to": _iso(until),
            "generated_at": _iso(now_us), "ledger": {"size": size, "head": head[1]},
            "verified": result.ok, "hr_deliveries": hr,
            "witnesses": witness_summary(witnesses)}
    _write(out / "report.html", _report_html(meta, regs, verify, sod, witnesses))
    if chromium is not None:
        print_pdf(out / "report.html", out / "report.pdf", chromium=chromium)
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        files[rel] = _sha256(path)
    manifest = {**meta, "files": files, "log_key": signing_key.verify_key.b64}
    _write(out / MANIFEST, canonical(manifest))
    _write(out / SIGNATURE, signing_key.sign(signed_message(manifest)).encode() + b"\n")
    _tar(out, archive)
    return Pack(out, archive, len(files) + 2, result.ok)


def witness_status(store: SQLStore) -> dict[str, Any]:
    """The newest v2 checkpoint and each witness's latest cosignature (tc_cosignatures):
    ``current`` when it cosigned that newest checkpoint, else how many entries behind."""
    checkpoint_tables.ensure_schema(store)
    newest = checkpoint_tables.newest(store)
    latest: dict[str, tuple[int, str, str, int]] = {}
    for name, key_id, size, line, received in store.query(
            "SELECT name, key_id, size, line, received_at FROM tc_cosignatures"):
        if str(name) not in latest or int(size) > latest[str(name)][0]:
            latest[str(name)] = (int(size), str(key_id), str(line), int(received))
    top = 0 if newest is None else newest.size
    return {
        "newest_checkpoint": None if newest is None else {"size": newest.size,
                                                          "made_at": _iso(newest.made_at)},
        "witnesses": [{"name": n, "key_id": k, "latest_size": sz, "line": ln,
                       "received_at": _iso(rx), "current": sz == top,
                       "behind_entries": top - sz}
                      for n, (sz, k, ln, rx) in sorted(latest.items())],
        "meaning": "current: the witness cosigned the newest checkpoint stored when the pack "
                   "was made; the lines are in bundle/checkpoints.v2.ndjson, whose notes "
                   "timeclock-verify checks"}


def _sha256(path: Path) -> str:
    import hashlib  # noqa: PLC0415 - only here
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tar(folder: Path, archive: Path) -> None:
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=f"{folder.name}/"
                                  f"{path.relative_to(folder).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
