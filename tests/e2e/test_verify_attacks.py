"""Issue 10's acceptance for ``timeclock-verify``, on a live site (lab.site: broker, collector
and real agents as processes, the clocks witnessing): a bundle exported while every clock
cosigns verifies with a quorum of the clocks, and the auditor keeps its newest checkpoint.
Then, with the collector stopped, an attacker who holds the database and the log key

- truncates the ledger (the last entries, their tree nodes and the checkpoints above), or
- deletes a punch from the middle, re-chains and re-trees everything after it, and appends a
  forged entry so that the size is unchanged,

and exports a fresh bundle with the log key (which signs a checkpoint of its size). Each
attacked bundle verifies on its own, and fails against the held checkpoint and ``--quorum 1``.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.ledger import checkpoint_tables, open_store
from tests.e2e.attack_kit import rehash_without_a_punch, truncate_ledger
from tests.e2e.site_kit import Site, Taps, cli, running_site, tapped_clock, wait_for
from wire.keys import VerifyKey
from wire.note import COSIGNATURE_V1, Note, NoteVerifier, cosigned_by

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

DEVICES = ("clock-1", "clock-2")


def _witness_vkeys(site: Site, origin: str) -> list[str]:
    """The clocks' witness vkeys, as an auditor's policy names them (DESIGN.md §8.3)."""
    store = open_store(site.store_url)
    try:
        keys = {d: VerifyKey.from_b64(next(k for k in store.keys(d)
                                           if k.until_seq is None).public_b64)
                for d in DEVICES}
    finally:
        store.close()
    return [NoteVerifier(f"{origin}/devices/{d}", k, COSIGNATURE_V1).vkey()
            for d, k in keys.items()]


def _covered_and_cosigned(site: Site) -> str | None:
    """The newest v2 checkpoint's origin, once it covers the whole ledger and every clock's
    cosignature of it verifies."""
    store = open_store(site.store_url)
    try:
        size = store.head()[0]
        cp = checkpoint_tables.newest(store)
    finally:
        store.close()
    if cp is None or cp.size != size:
        return None
    origin = cp.checkpoint.origin
    verifiers = [NoteVerifier.from_vkey(v) for v in _witness_vkeys(site, origin)]
    done = len(cosigned_by(cp.checkpoint, Note.from_text(cp.note), verifiers)) == len(DEVICES)
    return origin if done else None


def _size(site: Site) -> int:
    store = open_store(site.store_url)
    try:
        return store.head()[0]
    finally:
        store.close()


def _export(site: Site, out: Path) -> None:
    r = cli("collector.cli.main", "export", "--store", site.store_url, "--bundle", str(out),
            "--log-key", str(site.root / "log.key"), "--purpose", "issue 10 acceptance")
    assert r.returncode == 0, r.stdout + r.stderr


def _verify(site: Site, bundle: Path, *extra: str) -> tuple[int, dict[str, object]]:
    assert site.log_key is not None
    r = cli("wire.verify_cli", str(bundle), "--collector-key", site.log_key.verify_key.b64,
            "--json", *extra)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    report: dict[str, object] = json.loads(r.stdout)
    return r.returncode, report


@dataclass
class Audit:
    """What the auditor holds after the honest audit."""

    witnesses: list[str]        # --witness VKEY arguments, both clocks
    held: Path                  # the newest checkpoint note of the honest bundle
    size: int                   # the honest bundle's size


def _honest_audit(site: Site, tmp_path: Path) -> Audit:
    site.prepare()
    site.start_broker()
    site.start_collector()
    for d in DEVICES:
        tapped_clock(site, d)
    taps = Taps(site.clocks, interval_s=0.2)
    wait_for(lambda: _size(site) > 30, 120, "the clocks' first punches in the ledger")
    assert taps.stop_and_drain(site) > 0
    origins: list[str] = []

    def ready() -> bool:
        origin = _covered_and_cosigned(site)
        if origin is not None:
            origins.append(origin)
        return origin is not None
    wait_for(ready, 120, "a checkpoint of the whole ledger cosigned by every clock")
    witnesses = [a for v in _witness_vkeys(site, origins[-1]) for a in ("--witness", v)]
    honest = tmp_path / "honest"
    _export(site, honest)
    rc, report = _verify(site, honest, *witnesses, "--quorum", "2")
    assert (rc, report["first_failure"]) == (0, None), report["first_failure"]
    held = tmp_path / "held.txt"
    notes = (honest / "checkpoints.v2.ndjson").read_text().splitlines()
    held.write_text(json.loads(notes[-1])["note"])
    site.kill_collector("main", signal.SIGTERM)
    return Audit(witnesses, held, int(str(report["size"])))


def _assert_fails(site: Site, attacked: Path, audit: Audit, *, idx: int, message: str) -> None:
    rc, report = _verify(site, attacked)
    assert rc == 0, report["first_failure"]     # on its own the attacked ledger looks clean
    rc, report = _verify(site, attacked, "--trusted-checkpoint", str(audit.held))
    first = report["first_failure"]
    assert rc == 1
    assert isinstance(first, dict)
    assert (first["idx"], first["check"]) == (idx, "trusted-checkpoint")
    assert message in first["message"]
    rc, report = _verify(site, attacked, *audit.witnesses, "--quorum", "1")
    first = report["first_failure"]
    assert rc == 1
    assert isinstance(first, dict)
    assert first["check"] == "witness"
    assert "0 of the required 1 witness cosignatures" in first["message"]


def test_d5_truncated_ledger_fails_trusted_checkpoint_and_quorum(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        audit = _honest_audit(site, tmp_path)
        # Cut where no checkpoint was made: a cut back to exactly an old cosigned one meets
        # the quorum (the stated limit, docs/protocol.md §13.1); the held checkpoint still
        # catches it.
        store = open_store(site.store_url)
        try:
            made = {c.size for c in checkpoint_tables.all_checkpoints(store)}
        finally:
            store.close()
        keep = max(k for k in range(audit.size - 9, audit.size - 2) if k not in made)
        truncate_ledger(site.root / "ledger.db", keep)
        attacked = tmp_path / "attacked"
        _export(site, attacked)             # signs a checkpoint of the cut size: no witness
        _assert_fails(site, attacked, audit, idx=keep,
                      message="the ledger is smaller than a checkpoint you hold — truncated")


def test_d5_rehashed_ledger_fails_trusted_checkpoint_and_quorum(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        audit = _honest_audit(site, tmp_path)
        victim = rehash_without_a_punch(site.root / "ledger.db", audit.size)
        assert 0 < victim < audit.size
        attacked = tmp_path / "attacked"
        _export(site, attacked)             # signs a checkpoint of the forged ledger
        _assert_fails(site, attacked, audit, idx=audit.size - 1,
                      message="the ledger was rewritten below a checkpoint you hold")
