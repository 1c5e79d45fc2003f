"""The punch rows of the console's recent days, read and checked once, then extended by the
rows recorded since (issue 16: a page computed afresh answers in under 300 ms with a year of
punches for 500 employees; docs/performance.md "Console pages").

The HR, team, own-punches and timesheet pages pair the punches of their last days. Reading
those rows through ``store.punch_rows`` checks each one against its entry, body and device
enrolment (collector.ledger.row_check, issue 11), which costs per row; on a live site a punch
arrives every few seconds, so most views would read, check and pair the same ~11,000 rows
again for the one that is new. So, per store:

- :class:`RowWindow` keeps the rows it read (each checked when read) with ts from
  :data:`WINDOW_DAYS` days before today, and on the next view reads only the rows recorded
  since (``PunchQuery.from_idx``, over the punches' idx index), checked the same way;
- :class:`EmployeeWindow` keeps them resolved to the employee who held the badge, with the
  approved corrections applied, grouped per employee in (ts, device, seq) order, adding only
  the new rows; a view then costs per employee: each one's rows of the range are a slice,
  and a slice seen before is a :class:`SheetMemo` hit (its timesheet is not paired again);
- :class:`ProgressWindow` keeps each clock's progress (highest seq, gaps) and applies the
  seqs recorded since.

Invariants:
- every row used was read through ``store.punch_rows`` and passed its check; a row is held
  as it was when checked (what the ledger's entry says), never re-read from the projection
  without a check;
- what a view gets equals a fresh read for the ledger up to the head read at its start:
  :meth:`EmployeeWindow.sheets` gives ``load(...).sheets`` (timesheet_export), and
  :meth:`ProgressWindow.progress` gives ``store.progress`` (tests/collector/
  test_console_rows.py checks both as punches arrive, late ones too);
- an entry since the last read that can change or remove a recorded punch row — ``device``
  (keys, enrolment), ``retention`` (purge), ``shred`` (erasure) — or a head below the last
  read (a restore) drops everything held: the next view reads from scratch, so an erased
  person's punches are never shown from memory; an ``employee`` or ``badge`` entry or a
  different set of applied corrections groups the rows again;
- a range older than the window is not held: the caller reads it from the store (None).
"""

from __future__ import annotations

import bisect
import itertools
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

from collector.ledger import people_tables, queries
from collector.ledger.base import DeviceProgress
from collector.ledger.people_tables import BadgeResolver
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore
from collector.records.exports import Fixed
from collector.records.timesheet_export import time_punch
from collector.records.timesheets import Rules, TimePunch, Timesheet, build

WINDOW_DAYS = 16        # the HR page's 15 days, the own page's 14, the default timesheets' 8
DAY_US = 86_400 * 1_000_000
RESTART_KINDS = ("device", "retention", "shred")


class RowWindow:
    """Checked punch rows with ``ts`` >= a floor (UTC midnight :data:`WINDOW_DAYS` days
    before the day of the last call's ``now_us``), in the order they were read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._floor: int | None = None
        self._upto = 0
        self._rows: list[PunchRow] = []
        self.generation = 0
        self.reads = self.extensions = 0

    def held(self, store: SQLStore, *, now_us: int) -> tuple[int, list[PunchRow]]:
        """(generation, every row held), brought up to date. Within one generation the list
        only grows at its end (the rows recorded since, whatever their ts); a new generation
        (a read from scratch) may differ anywhere."""
        with self._lock:
            self._refresh(store, now_us)
            return self.generation, self._rows[:]

    @staticmethod
    def floor_at(now_us: int) -> int:
        return (now_us // DAY_US - WINDOW_DAYS) * DAY_US

    def _refresh(self, store: SQLStore, now_us: int) -> None:
        floor = self.floor_at(now_us)
        size = store.head()[0]       # before the rows: those of later entries wait
        if (self._floor != floor or size < self._upto
                or queries.any_of_kinds(store, self._upto, size, RESTART_KINDS)):
            self._read(store, PunchQuery(since=floor), size, fresh=True)
            self._floor = floor
            self.reads += 1
        elif size > self._upto:
            self._read(store, PunchQuery(since=floor, from_idx=self._upto), size,
                       fresh=False)
            self.extensions += 1

    def _read(self, store: SQLStore, query: PunchQuery, size: int, *, fresh: bool) -> None:
        got = [r for r in store.punch_rows(query) if r.idx < size]
        if fresh:
            self._rows = got
            self.generation += 1
        else:
            self._rows.extend(got)      # in the order recorded, not by ts
        self._upto = size


_WINDOWS: weakref.WeakKeyDictionary[SQLStore, RowWindow] = weakref.WeakKeyDictionary()
_WINDOWS_LOCK = threading.Lock()


def window_of(store: SQLStore) -> RowWindow:
    with _WINDOWS_LOCK:
        w = _WINDOWS.get(store)
        if w is None:
            w = _WINDOWS[store] = RowWindow()
        return w


class SheetMemo:
    """collector.records.timesheets.build, memoised on all it reads (employee, zone, rules,
    the punches as given): between two views most employees' punches are the same, so their
    timesheets are not paired again. A timesheet handed out is shared: read it, never change
    it. At most :data:`SHEETS_KEPT` are kept (least recently used go first)."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._sheets: OrderedDict[tuple[object, ...], Timesheet] = OrderedDict()
        self.size = size
        self.hits = self.misses = 0

    def build_slice(self, token: tuple[object, ...], employee_id: str, timezone: str,
                    punches: list[TimePunch], rules: Rules) -> Timesheet:
        """collector.records.timesheets.build of ``punches``, kept under ``token``, which
        the caller guarantees names exactly these punches (EmployeeWindow: the grouping's
        number, the employee, the version of their list and the slice's bounds)."""
        key = (*token, timezone, rules)
        with self._lock:
            found = self._sheets.get(key)
            if found is not None:
                self._sheets.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        sheet = build(employee_id, timezone, punches, rules)
        with self._lock:
            self._sheets[key] = sheet
            while len(self._sheets) > self.size:
                self._sheets.popitem(last=False)
        return sheet


SHEETS_KEPT = 5000          # ten pages' worth of 500 employees
SHEETS = SheetMemo(SHEETS_KEPT)


DIRECTORY_KINDS = ("employee", "badge")


@dataclass(slots=True)
class _Grouped:
    key: tuple[object, ...]         # sites, directory entry, corrections applied
    generation: int                 # of the RowWindow
    count: int                      # its rows taken so far
    tokens: int                     # this grouping's number (for the memo's keys)
    zones: dict[str, str]
    # employee -> their rows' (ts, device, seq), ts, and punches, by (ts, device, seq) as
    # store.punch_rows gives them; and a number that changes with any of the three
    keys: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)
    ts: dict[str, list[int]] = field(default_factory=dict)
    punches: dict[str, list[TimePunch]] = field(default_factory=dict)
    version: dict[str, int] = field(default_factory=dict)


class EmployeeWindow:
    """The window's rows resolved to the employee who held the badge (the directory's badge
    periods) with approved corrections applied and grouped by employee, as
    collector.records.timesheet_export.load groups them; kept in step with the RowWindow (the
    rows recorded since are added), and grouped again from the rows when the directory (an
    ``employee`` or ``badge`` entry), the corrections applied, the scope's sites or the
    window's generation change. A view then costs per employee, not per row: each employee's
    rows of the range are a slice, and a slice seen before is a :class:`SheetMemo` hit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: OrderedDict[frozenset[str] | None, _Grouped] = OrderedDict()

    def sheets(self, store: SQLStore, fixed: Fixed, rules: Rules, *, since: int, until: int,
               now_us: int, sites: frozenset[str] | None,
               employees: frozenset[str] | None = None, memo: SheetMemo | None = None
               ) -> list[Timesheet] | None:
        """Each employee's timesheet over ``since`` <= recorded ts < ``until`` (those of
        ``employees`` only, when given), by employee id: what ``load(store, PunchQuery(
        since, until), rules, fixed, sites=sites, employees=employees).sheets`` gives for
        the ledger at the call; None when the range is before the window."""
        window = window_of(store)
        if since < window.floor_at(now_us):
            return None
        generation, rows = window.held(store, now_us=now_us)
        applied = tuple(sorted((k, f, a.correction_idx) for k, fs in fixed.items()
                               for f, a in fs.items()))
        key = (queries.newest_of_kinds(store, DIRECTORY_KINDS), applied)
        with self._lock:
            g = self._groups.get(sites)
            if g is None or g.key != key or g.generation != generation:
                g = _Grouped(key, generation, 0, next(_TOKENS), {
                    e.employee_id: e.timezone for e in people_tables.employees(store)})
                self._groups[sites] = g
                while len(self._groups) > GROUPS_KEPT:
                    self._groups.popitem(last=False)
            if len(rows) > g.count:
                _take(g, rows, BadgeResolver.load(store), fixed, sites)
            chosen = sorted(g.ts if employees is None else (e for e in employees if e in g.ts))
            out = []
            for emp in chosen:
                ts = g.ts[emp]
                lo, hi = bisect.bisect_left(ts, since), bisect.bisect_left(ts, until)
                if lo == hi:
                    continue
                tz = g.zones.get(emp, "UTC")
                part = g.punches[emp][lo:hi]
                if memo is None:
                    out.append(build(emp, tz, part, rules))
                else:
                    out.append(memo.build_slice((g.tokens, emp, g.version[emp], lo, hi), emp,
                                                tz, part, rules))
            return out


def _take(g: _Grouped, rows: list[PunchRow], holders: BadgeResolver, fixed: Fixed,
          sites: frozenset[str] | None) -> None:
    """Add the rows ``g`` has not taken yet (load's loop: the scope's sites, the badge's
    holder at punch time, nobody's punches left out, corrections applied)."""
    for r in rows[g.count:]:
        if sites is not None and r.site not in sites:
            continue
        emp, _ = holders.resolve(r.credential, r.ts)
        if emp is None:
            continue
        k, keys = (r.ts, r.device, r.seq), g.keys.setdefault(emp, [])
        i = len(keys) if not keys or k > keys[-1] else bisect.bisect_left(keys, k)
        keys.insert(i, k)           # a clock's late punch goes into its place
        g.ts.setdefault(emp, []).insert(i, r.ts)
        g.punches.setdefault(emp, []).insert(i, time_punch(r, fixed))
        g.version[emp] = g.version.get(emp, 0) + 1
    g.count = len(rows)


GROUPS_KEPT = 8         # distinct site scopes grouped at once
_TOKENS = itertools.count(1)   # groupings, in every store: the memo's keys never collide


_EMPLOYEES: weakref.WeakKeyDictionary[SQLStore, EmployeeWindow] = weakref.WeakKeyDictionary()


def window_sheets(store: SQLStore, fixed: Fixed, rules: Rules, *, since: int, until: int,
                  now_us: int, sites: frozenset[str] | None,
                  employees: frozenset[str] | None = None) -> list[Timesheet] | None:
    """:meth:`EmployeeWindow.sheets` of ``store``'s window, memoised in :data:`SHEETS`."""
    with _WINDOWS_LOCK:
        w = _EMPLOYEES.get(store)
        if w is None:
            w = _EMPLOYEES[store] = EmployeeWindow()
    return w.sheets(store, fixed, rules, since=since, until=until, now_us=now_us,
                    sites=sites, employees=employees, memo=SHEETS)


class ProgressWindow:
    """Each clock's progress (``store.progress``: highest seq, contiguous prefix, gaps) kept
    per store and brought up to date from the punches recorded since (their (device, seq),
    through the idx index), instead of a window over every punch of the clock on each view
    of the ops page. Same answer as ``store.progress`` for the ledger up to the head read at
    the call; restarts on the :data:`RESTART_KINDS` as :class:`RowWindow` does (an erasure
    removes punch rows, so gaps may open)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._upto = 0
        self._state: dict[str, tuple[int, list[tuple[int, int]]]] = {}   # highest, gaps
        self.reads = 0

    def progress(self, store: SQLStore, device: str) -> DeviceProgress:
        with self._lock:
            size = store.head()[0]
            if size < self._upto or queries.any_of_kinds(store, self._upto, size,
                                                         RESTART_KINDS):
                self._state.clear()
            elif size > self._upto and self._state:
                for dev, seq in queries.punch_seqs_between(store, self._upto, size):
                    if dev in self._state:
                        self._state[dev] = _took(*self._state[dev], seq)
            self._upto = size
            if device not in self._state:
                highest, gaps = 0, list[tuple[int, int]]()
                for seq in queries.device_seqs(store, device, size):
                    highest, gaps = _took(highest, gaps, seq)
                self._state[device] = (highest, gaps)
                self.reads += 1
            highest, gaps = self._state[device]
            return DeviceProgress(device, gaps[0][0] - 1 if gaps else highest, highest,
                                  tuple(gaps))


def _took(highest: int, gaps: list[tuple[int, int]], seq: int
          ) -> tuple[int, list[tuple[int, int]]]:
    """(highest, gaps) once ``seq`` (not recorded before) is: beyond the highest it may open
    a gap, below it it fills one."""
    if seq > highest:
        return seq, gaps + [(highest + 1, seq - 1)] if seq > highest + 1 else gaps
    out: list[tuple[int, int]] = []
    for lo, hi in gaps:
        if lo <= seq <= hi:
            out.extend(g for g in ((lo, seq - 1), (seq + 1, hi)) if g[0] <= g[1])
        else:
            out.append((lo, hi))
    return highest, out


_PROGRESS: weakref.WeakKeyDictionary[SQLStore, ProgressWindow] = weakref.WeakKeyDictionary()


def progress_of(store: SQLStore, device: str) -> DeviceProgress:
    """:meth:`ProgressWindow.progress` of ``store``'s window."""
    with _WINDOWS_LOCK:
        w = _PROGRESS.get(store)
        if w is None:
            w = _PROGRESS[store] = ProgressWindow()
    return w.progress(store, device)
