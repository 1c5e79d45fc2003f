"""A clock refusing to cosign (a witness refusal, DESIGN.md §8.3) is recorded as an ``alert``
entry of kind ``witness-refusal``, severity 1, naming the clock (the detector is
collector.ingest.cosignatures; the entry comes from the Alerts sink ``serve`` uses)."""

from __future__ import annotations

import json
from pathlib import Path

from collector.ingest.alerts import Alerts
from collector.ledger.sqlbase import SQLStore
from tests.collector.test_device_witnesses import LOG_KEY, ORIGIN, Site
from wire.note import Checkpoint
from wire.witness import AddCheckpoint, cosignature_topic


def test_d5_d13_a_witness_refusal_is_an_alert_entry(store: SQLStore, tmp_path: Path) -> None:
    site = Site(store, tmp_path, ("clock-a",))
    site.alerts = Alerts(record=True, clock=lambda: site.now)
    site.dw = site.collector()
    site.punch(6)
    cp = site.checkpoint()
    site.dw.offer(cp)
    site.deliver()
    assert site.alerts.unrecorded() == 0            # consistent growth: cosigned, no alert
    small = Checkpoint(ORIGIN, 2, store.merkle_root(2))   # a truncated log offered
    reply = site.witnesses["clock-a"].handle(AddCheckpoint(0, (), small.sign(LOG_KEY)).to_bytes())
    assert reply is not None
    site.dw.receive(cosignature_topic("clock-a"), reply.to_bytes(), site.now)
    site.dw.process()
    assert site.alerts.flush(lambda facts: store.append(facts, now_us=site.now)) == 1
    (body,) = [json.loads(e.body) for e in store.entries()
               if e.entry.kind == "alert" and e.body is not None]
    assert (body["alert"], body["severity"], body["device"]) == ("witness-refusal", 1,
                                                                 "clock-a")
    assert "REFUSES" in body["detail"]
