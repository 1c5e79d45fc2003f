"""One stolen clock certificate breaks nothing (issue 11, control D3): table-driven attacks on
the broker of a real site (managed Mosquitto 2.0.11 with mTLS, a real collector, real agents)
while honest clocks punch; and the API refusing MQTT identities.

Each row names the attack, the certificate it uses, what the broker must answer (SUBACK
reason codes, PUBACK reason, the client id the broker forces) and what must be recorded:
every punch the honest clocks recorded is in the ledger, the collector's session is never
replaced, and the attacker receives nothing.
"""

from __future__ import annotations

import datetime as dt
import queue
from pathlib import Path

import pytest

from collector.ledger.sqlite import SQLiteStore
from tests.e2e.broker_attack_kit import (
    API_CN,
    ATTACKS,
    REFUSED,
    STOLEN,
    api_status,
    connect,
    connections_as,
    puback,
)
from tests.e2e.site_kit import Site, Taps, running_site, tapped_clock, wait_for
from tests.fixtures.mosquitto import suback
from tests.fixtures.pki import TestPKI
from wire.tls import client_context

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

def test_d3_insider_broker_attacks_refused_nothing_lost(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        site.prepare()
        site.start_broker()
        site.start_collector()
        serve_log = site.root / "collectors" / "main" / "serve.log"
        wait_for(lambda: serve_log.exists() and "MQTT subscribed" in serve_log.read_text(),
                 60, "the collector to subscribe")
        honest = [tapped_clock(site, "clock-a"), tapped_clock(site, "clock-b")]
        d = site.root / "stolen"
        d.mkdir()
        # A clock certificate of this site's CA, taken with its key (a spare clock's).
        certs = {"stolen-device": client_context(site.root / "ca" / "ca.crt",
                                                 *_issue(site, d, STOLEN, "device")),
                 "api-client": client_context(site.root / "ca" / "ca.crt",
                                              *_issue(site, d, API_CN, "api-client"))}
        identity = {"stolen-device": STOLEN, "api-client": API_CN}
        broker_log = site.root / "broker" / "mosquitto.log"
        col_before = connections_as(broker_log.read_text(), "collector.main")

        taps = Taps(honest, interval_s=0.05, max_taps=4000)   # starts tapping at once
        got: queue.Queue[str] = queue.Queue()
        try:
            wait_for(lambda: all(c.queue_stats()[1] >= 5 for c in honest), 120,
                     "the honest clocks to record punches")
            for a in ATTACKS:
                for _ in range(a.connections):
                    c, rc = connect(site.port, certs[a.cert], a.client_id, got)
                    try:
                        # TLS and CONNECT succeed (Mosquitto 2.0 has no CONNECT hook for a
                        # certificate identity); the id is forced to the CN...
                        assert not rc.is_failure, (a.name, rc)
                        assert suback(c, a.filters) == [REFUSED] * len(a.filters), a.name
                        if a.publish is not None:
                            assert puback(c, a.publish) == REFUSED, a.name
                    finally:
                        c.disconnect()
                        c.loop_stop()
                text = broker_log.read_text()
                # ... the broker logged the connection under the certificate's CN, never
                # under the id asked for (unless it is the CN), and refused every filter.
                assert connections_as(text, identity[a.cert]) >= a.connections, a.name
                assert f"denied SUBSCRIBE {a.filters[0]} for {identity[a.cert]}" in text, a.name
        finally:
            # Every clock records every tap from its first on, once, and drains: k..sent.
            taps.stop_and_drain(site)
        text = broker_log.read_text()
        # The collector's session was never replaced: one connection, never kicked.
        assert connections_as(text, "collector.main") == col_before
        assert "already connected, closing old connection" not in text
        assert serve_log.read_text().count("MQTT subscribed") == 1
        # Nothing was delivered to the attackers; every honest punch is in the ledger.
        assert got.empty(), [got.get() for _ in range(got.qsize())]
        prog = site.progress()
        assert [prog[c.device].contiguous for c in honest] == [c.queue_stats()[1]
                                                               for c in honest]
        assert all(c.queue_stats()[0] == 0 and c.queue_stats()[1] >= 5 for c in honest)


def _issue(site: Site, d: Path, cn: str, kind: str) -> tuple[Path, Path]:
    assert site.ca is not None
    site.ca.issue_client(cn, d / f"{cn}.key", d / f"{cn}.crt", kind=kind,
                         now=dt.datetime.now(dt.UTC))
    return d / f"{cn}.crt", d / f"{cn}.key"


@pytest.mark.parametrize(("kind", "name", "status"), [
    ("device", "clock-77", 401),               # a clock's certificate, even if registered
    ("collector", "collector.main", 401),      # a collector's certificate
    ("api-client", "api.payroll", 200),        # the one kind the API accepts
])
async def test_d3_api_refuses_device_and_collector_certificates(
        tmp_path: Path, pki: TestPKI, kind: str, name: str, status: int) -> None:
    cert = {"device": pki.device, "collector": pki.collector,
            "api-client": pki.api_client}[kind](name)
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        assert await api_status(store, pki, cert, kind=kind) == status
    finally:
        store.close()
