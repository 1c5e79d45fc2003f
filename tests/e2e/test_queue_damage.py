"""Issue 11 findings 3 and 11, replayed on a live site (real Mosquitto with mTLS, collector, agent
process): a stopped clock's queue is damaged in each of seven ways — queue.db deleted (the SD
card swap of finding 3), queue.db zero-length, WAL truncated, WAL deleted, WAL garbled (finding
11), the sequence mark lost with the queue intact, and the whole state directory lost (queue and
mark; the keys kept) — and restarted.

Each variant ends the same way: the clock refuses every tap (status ``sequence.state`` is
``refusing``, one "tap REFUSED" log line per tap) and records nothing new, the ledger verifies
(``timeclock-collector verify --full`` and ``timeclock-verify`` on a bundle); after
``timeclock-agent resume`` the clock continues at the seq after its mark, so no seq is ever used
twice (no conflict, no fork in quarantine), and the punches lost with the queue are a visible
gap in the ledger that equals the range in the clock's loss record. With the whole state lost
no record on the clock knows its last seq: it resumes from the collector's signed record
(``resume --from-collector``, docs/protocol.md §13.13), after the last seq the ledger holds and
linked to it; the punches it had committed and never delivered are gone with no trace that
either side could read (docs/operations.md says so).

The clock is killed (SIGKILL) rather than stopped cleanly: a clean stop checkpoints and removes
the WAL, so only a killed agent leaves committed punches in the WAL for the WAL variants. A
kill whose WAL holds too little for the damage to lose a punch (SQLite had just checkpointed) is
detected on a scratch copy, and the clock is run and killed again (at most KILL_TRIES times).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from agent.seqmark import LOSS_FILE, SeqLoss, read_losses
from collector.ledger import open_store
from lab.site import Clock, PtyFeed
from tests.agent.queue_damage_kit import LOSES_QUEUE_TRANSACTIONS, VARIANTS, last_seq_after
from tests.e2e.site_kit import Site, bundle_verifies, cli, running_site, tapped_clock, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

DELIVERED = 8          # punches the collector records before the broker goes away
UNDELIVERED = 12       # punches queued on the clock while the broker is away
KILL_TRIES = 5
TAP_EVERY_S = 0.2
WAIT_S = 120.0         # generous: a start of the agent or collector on a loaded machine


class Badge:
    """Writes numbered badge lines into the clock's pty."""

    def __init__(self, feed: PtyFeed) -> None:
        self.feed = feed
        self.n = 0

    def tap(self) -> None:
        self.n += 1
        self.feed.write(f"W26:{self.n}\r\n".encode())

    def until(self, done: Any, what: str, timeout_s: float = WAIT_S) -> None:
        """Tap every TAP_EVERY_S until ``done()``: bounded by the deadline, not by a count that
        must outlast the agent's start-up."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"timed out tapping until {what}"
            self.tap()
            time.sleep(TAP_EVERY_S)


def _last_seq(clock: Clock) -> int:
    return clock.queue_stats()[1] if clock.queue.exists() else 0


def _status(clock: Clock) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((clock.directory / "state" / "status.json")
                                          .read_text())
    except (OSError, ValueError):
        return {}
    return data


def _refused_lines(clock: Clock) -> int:
    return clock.log_file.read_text(errors="replace").count("tap REFUSED")


def _ledger(site: Site, device: str) -> tuple[list[int], list[str], tuple[tuple[int, int], ...]]:
    """(recorded seqs, quarantine reasons of entries naming the device, open gaps)."""
    store = open_store(site.store_url)
    try:
        seqs = sorted(r.seq for r in store.punch_rows(_query(device)))
        reasons = [q.reason for q in store.quarantine(limit=10_000) if device in q.topic]
        gaps = store.progress(device).gaps
    finally:
        store.close()
    return seqs, reasons, gaps


def _query(device: str) -> Any:
    from collector.ledger.sqlbase import PunchQuery  # noqa: PLC0415 -- one use

    return PunchQuery(device=device)


def _kill(clock: Clock) -> None:
    assert clock.process is not None
    clock.process.send_signal(signal.SIGKILL)
    clock.process.wait(60)
    clock.process = None


def _verify_full(site: Site) -> str:
    r = cli("collector.cli.main", "verify", "--full", "--store", site.store_url,
            "--state", str(site.root / "verify-state.json"), "--log-key",
            str(site.root / "log.key"), timeout_s=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "TAMPER" not in out, out
    return out


def _kill_with_a_wal_worth_damaging(site: Site, clock: Clock, badge: Badge, variant: str,
                                    scratch: Path) -> tuple[int, int | None]:
    """Queue UNDELIVERED more punches, kill the clock; (its last seq, the seq SQLite will open
    after the damage). Retries when SQLite had just checkpointed (nothing to lose)."""
    state = clock.directory / "state"
    for _ in range(KILL_TRIES):
        target = _last_seq(clock) + UNDELIVERED
        badge.until(lambda t=target: _last_seq(clock) >= t, f"seq {target} is queued")
        _kill(clock)
        mark = _last_seq(clock)
        after = last_seq_after(state, VARIANTS[variant], scratch)
        if variant not in LOSES_QUEUE_TRANSACTIONS or (after is not None and after < mark):
            return mark, after
        site.start_clock(clock)
    raise AssertionError(f"{variant}: {KILL_TRIES} kills and the damage never lost a punch")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_d4_queue_damage_ends_in_refusal_then_a_recorded_loss_never_a_reused_seq(
        tmp_path: Path, variant: str) -> None:
    with running_site(tmp_path / "site") as site:
        site.prepare()
        site.start_broker()
        site.start_collector()
        clock = tapped_clock(site, "clock-1")
        badge = Badge(clock.feeds[0])
        device = clock.device
        # (1) Recorded and delivered.
        badge.until(lambda: _last_seq(clock) >= DELIVERED, f"seq {DELIVERED} is queued")
        wait_for(site.drained, WAIT_S, "the clock to drain")
        delivered = _ledger(site, device)[0]
        # (2) The broker goes away (so the clock's next punches exist only in its queue); the
        # clock queues more and is killed.
        broker = site.broker
        assert broker is not None
        broker.pause()
        mark, after = _kill_with_a_wal_worth_damaging(site, clock, badge, variant,
                                                     tmp_path / "scratch")
        # (3) The damage, then everything comes back.
        VARIANTS[variant](clock.directory / "state")
        broker.start()
        site.start_clock(clock)
        wait_for(lambda: _status(clock).get("sequence", {}).get("state") == "refusing",
                 WAIT_S, "the clock to report its sequence refusing")
        seq_state = _status(clock)["sequence"]
        assert seq_state["reason"] == {"mark-lost": "mark-lost", "state-lost": "state-lost"
                                       }.get(variant, "queue-behind-mark"), seq_state
        # Tapped until three are refused: a line written before the reader opened its pty is
        # flushed by the open, so a fixed number of taps could fall short.
        before = _refused_lines(clock)
        badge.until(lambda: _refused_lines(clock) >= before + 3,
                    "three taps refused in the clock's log")
        assert _last_seq(clock) == (mark if variant == "mark-lost" else after)
        seqs, reasons, _ = _ledger(site, device)
        assert max(seqs) <= mark
        assert set(delivered) <= set(seqs)
        assert not {"conflict", "fork"} & set(reasons), reasons
        _verify_full(site)
        bundle_verifies(site, tmp_path / "bundle-refusing")
        # (4) The operator resumes the stopped clock; it continues after its mark (the whole
        # state lost: after the collector's signed last seq, the only record left).
        site.stop_clock(clock)
        extra = ("--from-collector",) if variant == "state-lost" else ()
        r = cli("agent.cli", "resume", "--config", str(clock.config), "--reason",
                f"test {variant}", *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "RESUMED" in r.stdout
        if variant == "state-lost":
            mark = max(delivered)        # the ledger's last: the clock continues after it
        [loss] = read_losses(clock.directory / "state" / LOSS_FILE)
        assert (loss.first, loss.last) == (_last_seq_before_resume(variant, mark, after), mark)
        site.start_clock(clock)
        badge.until(lambda: _last_seq(clock) >= mark + 3, f"seq {mark + 3} is queued")
        wait_for(lambda: clock.queue_stats()[0] == 0
                 and max(_ledger(site, device)[0]) >= mark + 3, WAIT_S,
                 "the resumed clock to drain")
        seqs, reasons, gaps = _ledger(site, device)
        assert not {"conflict", "fork"} & set(reasons), reasons    # no seq used twice
        assert _status(clock)["sequence"]["state"] == "ok"
        new = [s for s in seqs if s > mark]
        assert new[0] == mark + 1, new[:3]
        # The lost punches are exactly the gap: undelivered and gone from the queue; the
        # clock's signed report of the loss is in the ledger, and noted as reported.
        assert gaps == _expected_gaps(variant, loss, delivered), (gaps, loss)
        wait_for(lambda: "seq-loss" in _ledger(site, device)[1], WAIT_S,
                 "the clock's loss report in the ledger")
        assert _ledger(site, device)[1].count("seq-loss") == 1
        wait_for(lambda: read_losses(clock.directory / "state" / LOSS_FILE)[0].reported_us
                 is not None, WAIT_S, "the loss noted as reported on the clock")
        assert "reported a loss (signed)" in _verify_full(site)
        assert "reported a loss (signed)" in bundle_verifies(site, tmp_path / "bundle-resumed")


def _last_seq_before_resume(variant: str, mark: int, after: int | None) -> int:
    """The loss record's first seq: one after what the damaged queue still held."""
    if variant == "mark-lost":
        return mark + 1                     # the queue was intact: an empty range
    assert after is not None
    return after + 1


def _expected_gaps(variant: str, loss: SeqLoss, delivered: list[int]
                   ) -> tuple[tuple[int, int], ...]:
    if variant in ("mark-lost", "state-lost"):
        return ()           # state-lost: the clock continued right after the ledger's last
    first = max(loss.first, max(delivered) + 1)    # what the collector had is not lost
    return ((first, loss.last),) if first <= loss.last else ()
