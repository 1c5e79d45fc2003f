"""Small plots rendered on the server as inline SVG: no script, no fonts or images fetched.

Used by the evidence pack's report (collector.records.evidence) and the web console
(collector.api.console). Every label and title is escaped here, so the markup may be put
into an autoescaped template as is."""

from __future__ import annotations

import html
from collections.abc import Mapping


def svg_bars(title: str, counts: Mapping[str, int], *, keep_order: bool = False) -> str:
    """A bar chart of ``counts`` (label -> count) as inline SVG; labels sorted unless
    ``keep_order`` (then in the mapping's order, e.g. every hour of a day)."""
    items = list(counts.items()) if keep_order else sorted(counts.items())
    w, h, pad = 640, 180, 30
    if not items:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="40" role="img" '
                f'aria-label="{html.escape(title)}"><text x="4" y="24">{html.escape(title)}: '
                'none in the period</text></svg>')
    top = max(v for _, v in items) or 1
    bw = max(2.0, (w - 2 * pad) / len(items))
    bars = []
    for i, (label, v) in enumerate(items):
        bh = (h - 2 * pad) * v / top
        x = pad + i * bw
        bars.append(f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{bw * 0.8:.1f}" '
                    f'height="{bh:.1f}" fill="#3a6ea5"><title>{html.escape(label)}: {v}'
                    '</title></rect>')
    first, last = html.escape(items[0][0]), html.escape(items[-1][0])
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
            f'aria-label="{html.escape(title)}"><text x="{pad}" y="16">{html.escape(title)} '
            f'(max {top})</text>{"".join(bars)}<text x="{pad}" y="{h - 8}">{first}</text>'
            f'<text x="{w - pad}" y="{h - 8}" text-anchor="end">{last}</text></svg>')
