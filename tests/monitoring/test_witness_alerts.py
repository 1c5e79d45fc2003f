"""A clock refusing to cosign (a witness refusal, DESIGN.md §8.3) raises a severity-1
``witness-refusal`` alert naming the clock — log line, metric, listeners (webhooks) — and is
deliberately not an ``alert`` entry of the ledger it accuses (collector.ingest.alerts
.NOT_RECORDED: the evidence against a ledger does not belong in it, and each entry would
grow the log into the next refused checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collector.ingest.alerts import Alerts
from collector.ingest.metrics import sample_value
from collector.ledger.sqlbase import SQLStore
from tests.collector.test_device_witnesses import LOG_KEY, ORIGIN, Site
from wire.note import Checkpoint
from wire.witness import AddCheckpoint, cosignature_topic


def test_d5_d13_a_witness_refusal_alerts_outside_the_ledger(store: SQLStore,
                                                           tmp_path: Path) -> None:
    site = Site(store, tmp_path, ("clock-a",))
    site.alerts = Alerts(record=True, clock=lambda: site.now)
    raised: list[dict[str, Any]] = []
    site.alerts.listeners.append(raised.append)
    site.dw = site.collector()
    site.punch(6)
    cp = site.checkpoint()
    site.dw.offer(cp)
    site.deliver()
    assert raised == []                              # consistent growth: cosigned, no alert
    before = sample_value("timeclock_alerts_total",
                          {"kind": "witness-refusal", "severity": "1"}) or 0.0
    small = Checkpoint(ORIGIN, 2, store.merkle_root(2))   # a truncated log offered
    reply = site.witnesses["clock-a"].handle(AddCheckpoint(0, (), small.sign(LOG_KEY)).to_bytes())
    assert reply is not None
    site.dw.receive(cosignature_topic("clock-a"), reply.to_bytes(), site.now)
    site.dw.process()
    (body,) = raised
    assert (body["alert"], body["severity"], body["device"]) == ("witness-refusal", 1,
                                                                 "clock-a")
    assert "REFUSES" in body["detail"]
    assert sample_value("timeclock_alerts_total",
                        {"kind": "witness-refusal", "severity": "1"}) == before + 1
    size = store.head()[0]
    assert site.alerts.flush(lambda facts: store.append(facts, now_us=site.now)) == 0
    assert store.head()[0] == size
