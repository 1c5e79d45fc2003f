"""Tell a clock, right after its receipt, that a punch it just had recorded was of an unknown
or a lost/blocked badge (issue 15 item 5; docs/protocol.md §13.16, wire.badge_outcome), so the
clock can signal it at the reader.

The judgement is the badge-scan detector's (collector.ingest.badge_scans): the same people
directory resolution at the punch's device time, read through its resolver (nothing is
loaded twice), and silent whenever the detector is (off, or a ledger without badge periods,
where every badge would be "unknown"). One signed message per newly appended punch whose badge
was not held at its device time; nothing for a held badge, a duplicate, or a punch not
appended. The messages are built on the writer thread after the commit and published after
the receipts (collector.ingest.pipeline.Writer): they never delay or refuse a punch, and a
message that does not reach the clock loses nothing but a beep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from collector.ingest.badge_scans import Resolve
from collector.ledger.base import AppendResult, Fact, Outcome, PunchFact
from wire.badge_outcome import BadgeOutcome, topic
from wire.keys import SigningKey

log = logging.getLogger("timeclock.ingest")


class BadgeOutcomes:
    """Builds the signed badge outcomes of a committed batch."""

    def __init__(self, log_key: SigningKey, resolver: Callable[[], Resolve | None]) -> None:
        self.log_key = log_key
        self.resolver = resolver     # the detector's current resolver, None while it is silent
        self.sent = 0

    def for_batch(self, done: Sequence[tuple[Fact, AppendResult]], *,
                  now_us: int) -> list[tuple[str, bytes]]:
        """(topic, payload) for each appended punch of an unknown, lost or blocked badge."""
        resolve = self.resolver()
        if resolve is None:
            return []
        out: list[tuple[str, bytes]] = []
        for fact, r in done:
            if type(fact) is not PunchFact or r.outcome is not Outcome.APPENDED:
                continue
            p = fact.signed.punch
            _, status = resolve(p.credential, p.ts)
            if status == "assigned":
                continue
            signed = BadgeOutcome(p.device, p.seq, p.hash(), status, now_us,
                                  self.log_key.key_id).sign(self.log_key)
            out.append((topic(p.device), signed.to_bytes()))
            log.info("badge outcome for %s#%d: %s [idx %d]", p.device, p.seq, status, r.idx)
        self.sent += len(out)
        return out
