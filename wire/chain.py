"""Device chains: each device's punches, ordered by seq (not by arrival), must link by ``prev``.

``check_device_chain`` returns a result object (gaps are findings, a broken link or a reused
seq is tampering); ``verify_device_chain`` raises on tampering.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from wire import ZERO_HASH
from wire.errors import ChainBrokenError, ReplayError
from wire.punch import Punch


@dataclass
class ChainReport:
    device: str
    count: int = 0
    highest_seq: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)      # missing inclusive ranges
    breaks: list[int] = field(default_factory=list)                # seqs whose prev mismatches
    duplicates: list[int] = field(default_factory=list)            # seqs seen more than once

    @property
    def ok(self) -> bool:
        return not self.breaks and not self.duplicates


def check_device_chain(device: str, punches: Iterable[Punch]) -> ChainReport:
    """Check one device's punches in seq order: duplicates, gaps, and ``prev`` links.

    A link is checked only where seq-1 is present; across a gap nothing can be proven.
    """
    report = ChainReport(device)
    by_seq: dict[int, str] = {}
    prevs: dict[int, str] = {}
    for p in punches:
        report.count += 1
        h = p.hash()
        if p.seq in by_seq:
            report.duplicates.append(p.seq)
            continue
        by_seq[p.seq] = h
        prevs[p.seq] = p.prev
    expected_next = 1
    for seq in sorted(by_seq):
        if seq > expected_next:
            report.gaps.append((expected_next, seq - 1))
        if seq == 1:
            if prevs[seq] != ZERO_HASH:
                report.breaks.append(seq)
        elif seq - 1 in by_seq and prevs[seq] != by_seq[seq - 1]:
            report.breaks.append(seq)
        expected_next = seq + 1
    report.highest_seq = expected_next - 1
    report.duplicates.sort()
    return report


def verify_device_chain(device: str, punches: Iterable[Punch]) -> ChainReport:
    report = check_device_chain(device, punches)
    if report.duplicates:
        raise ReplayError(f"{device}: seq {report.duplicates[0]} appears more than once",
                          field="seq")
    if report.breaks:
        raise ChainBrokenError(f"{device}: seq {report.breaks[0]} prev does not link to "
                               f"seq {report.breaks[0] - 1}", field="prev")
    return report
