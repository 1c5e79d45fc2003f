"""Timesheets: the pairing engine lives in wire.timesheets (pure, so that
``timeclock-verify --timesheet`` recomputes the hours with the same code offline); this module
is the collector's name for it."""

from __future__ import annotations

from wire.timesheets import (
    CSV_FIELDS,
    MINUTE_US,
    PERIODS,
    ROUNDINGS,
    US,
    Exception_,
    Rules,
    Shift,
    TimePunch,
    Timesheet,
    TimesheetError,
    build,
    csv_text,
    hours,
    local,
    ndjson_items,
    period_of,
    render,
    shift_row,
    timecard,
    week_of,
    zone,
)

__all__ = ["CSV_FIELDS", "MINUTE_US", "PERIODS", "ROUNDINGS", "US", "Exception_", "Rules",
           "Shift", "TimePunch", "Timesheet", "TimesheetError", "build", "csv_text", "hours",
           "local", "ndjson_items", "period_of", "render", "shift_row", "timecard", "week_of",
           "zone"]
