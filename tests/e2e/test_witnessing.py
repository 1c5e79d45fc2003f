"""Clocks as witnesses on a live site (DESIGN.md §8.3; lab.site: broker, collector and real
agents as processes): every clock cosigns the checkpoints, the cosignatures are stored and
re-published with the checkpoint; then each attack of issue 10 — stop the collector and
either delete the ledger's last entries (the triggers dropped, with their tree nodes and the
checkpoints above) or delete a punch from the middle and re-hash the chain and the tree after
it (the covering checkpoints removed), remove the collector's own state file, restart — and
every clock refuses to cosign the first checkpoint it is offered, and says so in its status,
`timeclock-agent status` and `device list`; an external witness (`timeclock-witness`) refuses
too."""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.ingest.checkpoints import default_origin
from collector.ledger import checkpoint_tables, open_store
from collector.service.log_state import STATE_FILE
from lab.site import Site
from tests.e2e.attack_kit import rehash_without_a_punch, truncate_ledger
from tests.e2e.site_kit import Taps, cli, running_site, tapped_clock, wait_for
from tests.witness.witness_kit import WITNESS_NAME, Log, ServerTLS, WitnessServer
from wire.clock import now_us
from wire.keys import VerifyKey
from wire.note import COSIGNATURE_V1, Checkpoint, Note, NoteVerifier, cosigned_by
from wire.tls import client_context
from wire.topics import CHECKPOINT
from wire.witness import device_witness_name

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

INTERVAL_S = 0.2          # one tap per clock this often
CHECKPOINT_EVERY_S = 2    # a short checkpoint interval, so a refusal comes quickly
DEVICES = ("clock-1", "clock-2")


def _short_checkpoints(site: Site) -> None:
    cfg = site.collector_config()
    text = cfg.read_text()
    assert "every_s = 5" in text
    cfg.write_text(text.replace("every_s = 5", f"every_s = {CHECKPOINT_EVERY_S}"))


def _external_witness(site: Site) -> WitnessServer:
    """A timeclock-witness for this site's log (HTTPS with the site CA's server certificate),
    in the collector's [[witnesses]]."""
    assert site.ca is not None
    assert site.log_key is not None
    key_file, cert_file = site.ca.server_files()
    srv = WitnessServer(site.root / "witness", ServerTLS(site.ca.cert_file, cert_file, key_file),
                        [Log(site.log_key, default_origin(site.log_key.key_id))])
    srv.start()
    cfg = site.collector_config()
    cfg.write_text(cfg.read_text() + f'\n[[witnesses]]\nurl = "{srv.url}"\n'
                   f'name = "{WITNESS_NAME}"\nkey = "{srv.verifier.vkey()}"\n'
                   f'ca_cert = "{site.ca.cert_file}"\n')
    return srv


def _device_keys(site: Site) -> dict[str, VerifyKey]:
    store = open_store(site.store_url)
    try:
        return {d: VerifyKey.from_b64(next(k for k in store.keys(d)
                                           if k.until_seq is None).public_b64)
                for d in DEVICES}
    finally:
        store.close()


def _verifiers(site: Site, origin: str) -> list[NoteVerifier]:
    return [NoteVerifier(device_witness_name(origin, d), k, COSIGNATURE_V1)
            for d, k in _device_keys(site).items()]


def _newest(site: Site) -> checkpoint_tables.StoredCheckpoint | None:
    store = open_store(site.store_url)
    try:
        if not store.query("SELECT 1 FROM sqlite_master WHERE name = 'tc_checkpoints_v2'"):
            return None     # polled before the collector made its checkpoint tables
        return checkpoint_tables.newest(store)
    finally:
        store.close()


def _fully_cosigned(site: Site, extra: NoteVerifier
                    ) -> checkpoint_tables.StoredCheckpoint | None:
    """The newest checkpoint, if every clock's and the external witness's cosignatures of it
    are stored and verify."""
    cp = _newest(site)
    if cp is None:
        return None
    names = cosigned_by(cp.checkpoint, Note.from_text(cp.note),
                        [*_verifiers(site, cp.checkpoint.origin), extra])
    return cp if len(names) == len(DEVICES) + 1 else None


def _retained_checkpoint(site: Site) -> str:
    """The note retained on timeclock/v1/log/checkpoint, read with a certificate of its own
    (the broker forces the client id to the CN: the collector's would replace its session)."""
    d = site.root / "checkpoint-reader"
    if not (d / "tls.crt").exists():
        assert site.ca is not None
        d.mkdir(exist_ok=True)
        site.ca.issue_client("checkpoint-reader", d / "tls.key", d / "tls.crt", kind="device",
                             now=dt.datetime.now(dt.UTC))
    got: queue.Queue[bytes] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="checkpoint-reader",
                    protocol=mqtt.MQTTv5)
    c.tls_set_context(client_context(site.root / "ca" / "ca.crt", d / "tls.crt",
                                     d / "tls.key"))
    c.on_connect = lambda cl, *_a: cl.subscribe(CHECKPOINT, qos=1)
    c.on_message = lambda _c, _u, m: got.put(bytes(m.payload))
    c.connect("127.0.0.1", site.port)
    c.loop_start()
    try:
        return got.get(timeout=30).decode()
    finally:
        c.disconnect()
        c.loop_stop()


def _device_list(site: Site) -> dict[str, dict[str, Any]]:
    r = cli("collector.cli.main", "device", "list", "--config", str(site.collector_config()),
            "--json")
    assert r.returncode == 0, r.stderr
    return {row["device"]: row for row in json.loads(r.stdout)}


def _witness_state(site: Site, device: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(
        (site.root / "clocks" / device / "state" / "witness.json").read_text())
    return state


def _head(site: Site) -> int:
    store = open_store(site.store_url)
    try:
        return store.head()[0]
    finally:
        store.close()


@pytest.fixture
def cleanup() -> Iterator[list[WitnessServer]]:
    servers: list[WitnessServer] = []
    yield servers
    for srv in servers:
        srv.stop()


@pytest.mark.parametrize("attack", ["truncate", "rehash"])
def test_d5_clocks_cosign_then_refuse_an_attacked_ledger(tmp_path: Path, attack: str,
                                                         cleanup: list[WitnessServer]) -> None:
    with running_site(tmp_path / "site") as site:
        site.prepare()
        _short_checkpoints(site)
        external = _external_witness(site)
        cleanup.append(external)
        site.start_broker()
        site.start_collector()
        for d in DEVICES:
            tapped_clock(site, d)
        taps = Taps(site.clocks, interval_s=INTERVAL_S)

        # -- every clock cosigns; the cosignatures are stored and re-published ----------------
        held: dict[str, checkpoint_tables.StoredCheckpoint] = {}

        def cosigned_past(n: int) -> bool:
            cp = _fully_cosigned(site, external.verifier)
            if cp is not None and cp.size > n:
                held["cp"] = cp
                return True
            return False
        wait_for(lambda: cosigned_past(20), 120,
                 "a checkpoint cosigned by every clock and the external witness")
        first = held["cp"]
        wait_for(lambda: cosigned_past(first.size), 120,
                 "a later checkpoint cosigned by every clock (a proof from the first)")
        cp = held["cp"]
        origin = cp.checkpoint.origin

        verifiers = _verifiers(site, origin)

        def republished() -> bool:
            note = Note.from_text(_retained_checkpoint(site))
            return len(cosigned_by(Checkpoint.from_body(note.body), note,
                                   [*verifiers, external.verifier])) == len(DEVICES) + 1
        wait_for(republished, 60, "a checkpoint re-published, retained, with every "
                 "cosignature")
        wait_for(lambda: all(r["witness"] == "ok" for r in _device_list(site).values()), 60,
                 "device list showing every clock's witness ok")

        # -- the attack ------------------------------------------------------------------------
        sent = taps.stop_and_drain(site)
        assert sent > 0
        wait_for(lambda: all(_witness_state(site, d)["note"] is not None for d in DEVICES), 30,
                 "every clock holding a checkpoint")
        site.kill_collector("main", signal.SIGTERM)
        sizes = {d: int(Note.from_text(_witness_state(site, d)["note"]).body.split("\n")[1])
                 for d in DEVICES}
        # The external witness may hold less than the clocks: its cosignature of the last
        # checkpoint can still have been in flight at the stop (seen on a loaded machine). A
        # witness can only catch a rewrite of history it has cosigned, so the attack keeps
        # less than what every witness, clock or external, holds.
        witness_held = external.size_held(origin)
        assert witness_held >= first.size, (witness_held, first.size)
        if attack == "truncate":
            keep = min(*sizes.values(), witness_held) - 5
            assert keep > 10, (sizes, witness_held)
            truncate_ledger(site.root / "ledger.db", keep)
        else:   # the same size, another history from ``keep`` (the victim) on
            keep = rehash_without_a_punch(site.root / "ledger.db", _head(site))
            assert 0 < keep < min(*sizes.values(), witness_held), (keep, sizes, witness_held)
        (site.root / STATE_FILE).unlink()        # the attacker erases the collector's memory
        restart_us = now_us()
        site.start_collector()
        taps = Taps(site.clocks, interval_s=INTERVAL_S)
        try:
            wait_for(lambda: all(_witness_state(site, d).get("refusing") for d in DEVICES),
                     120, f"every clock refusing to cosign the attacked ({attack}) ledger")
            wait_for(lambda: all(r["witness"] == "refusing"
                                 for r in _device_list(site).values()), 60,
                     "device list showing every clock refusing")
            wait_for(lambda: f"witness {WITNESS_NAME} REFUSES" in (
                site.root / "collectors" / "main" / "serve.log").read_text(), 120,
                f"the external witness refusing the attacked ({attack}) ledger")
        finally:
            taps.stop()

        # Within one checkpoint interval: each clock refused the very first checkpoint the
        # restarted collector offered it (the newest it kept, or the first it made).
        store = open_store(site.store_url)
        try:
            after = [c for c in checkpoint_tables.all_checkpoints(store)
                     if c.made_at >= restart_us or c.size <= keep]
            offered_first = max(c.size for c in after if c.size <= keep)
            v2_sizes = sorted(c.size for c in after)
        finally:
            store.close()
        first_offers = (offered_first, *[s for s in v2_sizes if s > keep][:1])
        clocks = {c.device: c for c in site.clocks}
        for d in DEVICES:
            st = _witness_state(site, d)
            refusing = st["refusing"]
            assert refusing["reason"] in (("shrinking", "inconsistent") if attack == "truncate"
                                          else ("inconsistent",)), refusing
            assert refusing["offered_size"] in v2_sizes, (refusing, v2_sizes)
            # The state holds the latest refusal; the clock's log says which came first (by
            # order, not by time: the machine may be slow).
            refused = [int(m) for m in re.findall(r"WITNESS REFUSES to cosign size (\d+) ",
                                                   clocks[d].log_file.read_text())]
            assert refused, d
            assert refused[0] in first_offers, (d, refused, first_offers, v2_sizes)
            assert st["cosigned_at_us"] < restart_us      # nothing cosigned since the attack
            # still the honest checkpoint it held at the attack (a request in flight when the
            # collector stopped may have moved it forward, never back)
            assert int(Note.from_text(st["note"]).body.split("\n")[1]) >= sizes[d]
        rows = _device_list(site)
        for d in DEVICES:
            assert any("WITNESS REFUSES" in w for w in rows[d]["warnings"]), rows[d]
        status = cli("agent.cli", "status", "--config", str(site.clocks[0].config))
        assert "witness:       REFUSING to cosign" in status.stdout, status.stdout
        serve_log = (site.root / "collectors" / "main" / "serve.log").read_text()
        assert "kind=witness-refusal" in serve_log
        for c in site.clocks:
            assert "WITNESS REFUSES" in c.log_file.read_text()
        # The external witness kept the honest checkpoint and never cosigned the other log.
        assert external.size_held(origin) == witness_held
