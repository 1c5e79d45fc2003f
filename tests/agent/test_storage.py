"""A full disk on the clock: a bounded WAL, refused taps that are visible and counted, recovery
without a restart, a status file that still tells the truth, and feedback at the reader.

The small disk is a REAL 2 MiB tmpfs (``tiny_fs``), filled by a real file.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.errors import AgentError, ConfigError, TapRefusedError
from agent.feedback import CommandFeedback
from agent.punches import REFUSAL_LOG_BURST, REFUSED_FULL, PunchMaker
from agent.queue import (
    JOURNAL_SIZE_LIMIT_BYTES,
    MIN_FREE_BYTES,
    WAL_AUTOCHECKPOINT_PAGES,
    Outbox,
)
from agent.readers.base import Tap, mono_us
from agent.status import STATUS_BLOCK_BYTES, read_status, write_status
from tests.agent.disk_kit import fill, free_bytes
from tests.agent.receipt_kit import punch_builder
from wire.chain import verify_device_chain
from wire.keys import SigningKey

DEVICE = "clock-0017"
CREDENTIAL = "em4100:0012345678"
# The WAL never grows past the size limit plus the pages of one checkpoint interval.
WAL_BOUND_BYTES = JOURNAL_SIZE_LIMIT_BYTES + (WAL_AUTOCHECKPOINT_PAGES + 8) * (4096 + 24)
COMMAND_S = 60.0   # a feedback command's process start and end: generous, it costs nothing


def tap(reader: str = "front") -> Tap:
    return Tap(reader, CREDENTIAL, "in", mono_us())


# ---- a bounded WAL, same durability -------------------------------------------------------------

def test_queue_keeps_full_durability_and_its_wal_stays_bounded(tmp_path: Path) -> None:
    qpath = tmp_path / "queue.db"
    sk = SigningKey.generate()
    build = punch_builder(sk, DEVICE, credential=CREDENTIAL)
    biggest = 0
    with Outbox(qpath, os.urandom(32), DEVICE) as box:
        # The connection's own settings (white box: these are per connection).
        c = box._conn  # noqa: SLF001
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL
        assert c.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert c.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT_PAGES
        assert c.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT_BYTES
        for _ in range(12):
            for _ in range(50):
                box.record(build)
                biggest = max(biggest, box.wal_bytes())
            acked = [p.punch.seq for p in box.pending(limit=45)]
            assert box.delete_acked(acked) == 45
            biggest = max(biggest, box.wal_bytes())
        assert box.depth() == 12 * 5
        # SQLite's defaults (checkpoint at 1000 pages, never shrink) reach ~4 MB here.
        assert biggest <= WAL_BOUND_BYTES, f"WAL grew to {biggest} bytes"
        for name in ("queue.db", "queue.db-wal"):
            data = (tmp_path / name).read_bytes()
            assert CREDENTIAL.encode() not in data, name
            assert b"0012345678" not in data, name
            assert b'"credential"' not in data, name
            assert b'"punch"' not in data, name


def test_queue_on_a_2mib_disk_keeps_recording_thousands_of_punches(tiny_fs: Path) -> None:
    """The fault-injection finding: with SQLite's default WAL a 2 MiB disk is full after ~180
    punches even while receipts delete them; bounded, it never fills."""
    build = punch_builder(SigningKey.generate(), DEVICE)
    with Outbox(tiny_fs / "queue.db", os.urandom(32), DEVICE) as box:
        for i in range(1, 2001):
            box.record(build)
            if i % 100 == 0:   # receipts arrive in batches and leave a few rows unacked
                box.delete_acked([p.punch.seq for p in box.pending(limit=80)])
        assert box.last_seq() == 2000
        assert box.storage().state == "ok"
        assert box.wal_bytes() <= WAL_BOUND_BYTES
        assert free_bytes(tiny_fs) > 1024 * 1024


# ---- refuse, count, log, recover -----------------------------------------------------------------

def test_full_disk_refuses_taps_visibly_and_recovers_without_restart(
        tiny_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    sk = SigningKey.generate()
    mono = [1000.0]
    refused: list[tuple[str, str]] = []
    with Outbox(tiny_fs / "queue.db", os.urandom(32), DEVICE) as box:
        maker = PunchMaker(box, sk, on_refused=lambda t, why: refused.append((t.reader, why)),
                           monotonic=lambda: mono[0])
        for _ in range(5):
            maker.record(tap())
        filler = fill(tiny_fs)
        assert free_bytes(tiny_fs) < 4096
        # The WAL file has room for a few punches; then the disk is full for real.
        for _ in range(200):
            try:
                maker.record(tap())
            except TapRefusedError:
                break
        else:
            raise AssertionError("200 taps committed on a full disk")
        last = box.last_seq()
        for _ in range(REFUSAL_LOG_BURST + 5):
            with pytest.raises(TapRefusedError, match="storage full, the punch was not recorded"):
                maker.record(tap())
        assert box.last_seq() == last, "a refused tap must not use a seq"
        assert maker.refused == REFUSAL_LOG_BURST + 6
        assert refused == [("front", REFUSED_FULL)] * maker.refused
        lines = [r for r in caplog.records if "tap REFUSED on reader front" in r.getMessage()]
        assert len(lines) == REFUSAL_LOG_BURST          # then rate-limited
        assert all(r.levelno == logging.ERROR for r in lines)
        assert "database or disk is full" in lines[0].getMessage()
        assert CREDENTIAL not in caplog.text
        assert "0012345678" not in caplog.text
        mono[0] += 61.0
        with pytest.raises(TapRefusedError):
            maker.record(tap())
        assert "6 not logged" in caplog.records[-1].getMessage()

        st = box.storage()
        assert (st.state, st.free_bytes) == ("full", 0)
        assert "taps are refused until space is freed" in st.detail
        assert box.probe_storage().state == "full"

        filler.unlink()
        # Noticed by the probe alone, before any tap.
        st = box.probe_storage()
        assert st.state == "ok"
        assert st.free_bytes is not None
        assert st.free_bytes >= MIN_FREE_BYTES
        recorded = maker.record(tap())
        assert recorded.punch.seq == last + 1
        punches = box.pending(limit=1000)
    assert [p.punch.seq for p in punches] == list(range(1, last + 2))
    assert verify_device_chain(DEVICE, [p.punch for p in punches]).gaps == []


# ---- the status file on a full disk ------------------------------------------------------------

def _snap(detail: str) -> dict[str, Any]:
    return {"v": 1, "device": DEVICE, "pid": os.getpid(), "state": "running", "at_us": 1,
            "storage": {"state": "full", "detail": detail}}


def test_status_file_is_rewritten_in_place_when_the_disk_is_full(tiny_fs: Path) -> None:
    path = tiny_fs / "status.json"
    assert write_status(path, _snap("ok")) == "replaced"
    assert path.stat().st_size % STATUS_BLOCK_BYTES == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    filler = fill(tiny_fs)
    assert write_status(path, _snap("x" * 1500)) == "in-place"
    sf = read_status(path, now_us=2, stale_after_s=10)
    assert sf is not None
    assert sf.snapshot == _snap("x" * 1500)
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler", "status.json"]
    with pytest.raises(AgentError, match="does not fit in the file's .* kept the previous"):
        write_status(path, _snap("y" * 20_000))
    sf = read_status(path, now_us=2, stale_after_s=10)
    assert sf is not None
    assert sf.snapshot["storage"]["detail"] == "x" * 1500
    filler.unlink()
    assert write_status(path, _snap("y" * 20_000)) == "replaced"


# ---- feedback at the reader ---------------------------------------------------------------------

@pytest.mark.subprocess
def test_refused_command_gets_the_reason_and_never_the_credential(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    fb = CommandFeedback(["/bin/sh", "-c", 'env > "$0"', str(out)], timeout_s=10)
    fb(tap("front"), REFUSED_FULL)
    assert fb.wait_idle(COMMAND_S)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["TIMECLOCK_REASON"] == "storage-full"
    assert env["TIMECLOCK_READER"] == "front"
    assert env["TIMECLOCK_ACTION"] == "in"
    assert "0012345678" not in out.read_text()
    assert (fb.runs, fb.failures, fb.skipped) == (1, 0, 0)


@pytest.mark.subprocess
def test_refused_command_runs_one_at_a_time_and_is_killed_at_its_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    fb = CommandFeedback(["/bin/sleep", "30"], timeout_s=0.2)
    fb(tap(), REFUSED_FULL)
    fb(tap(), REFUSED_FULL)           # the first still runs: not signalled again
    assert fb.wait_idle(COMMAND_S)
    assert (fb.runs, fb.skipped, fb.failures) == (1, 1, 1)
    assert "still running after 0.2s: killed" in caplog.text
    missing = CommandFeedback(["/nonexistent/beep"])
    missing(tap(), REFUSED_FULL)
    assert missing.wait_idle(COMMAND_S)
    assert missing.failures == 1
    assert "feedback command /nonexistent/beep cannot run" in caplog.text


def _config(feedback: Any) -> dict[str, Any]:
    return {"device": {"id": DEVICE}, "keys": {"signing_key": "s.key", "queue_key": "q.key"},
            "readers": {"front": {"kind": "simulated", "credentials": ["1"]}},
            "feedback": feedback}


def test_feedback_config_is_optional_typed_and_checked(tmp_path: Path) -> None:
    cfg = parse_config({k: v for k, v in _config({}).items() if k != "feedback"},
                       base_dir=tmp_path)
    assert cfg.feedback.refused_command == ()
    cfg = parse_config(_config({"refused_command": ["/usr/bin/beep", "-f", "200"],
                                "command_timeout_s": 2}), base_dir=tmp_path)
    assert cfg.feedback.refused_command == ("/usr/bin/beep", "-f", "200")
    assert cfg.feedback.command_timeout_s == 2.0
    with pytest.raises(ConfigError) as ei:
        parse_config(_config({"refused_command": ["beep"], "command_timeout_s": 0,
                              "colour": 1}), base_dir=tmp_path)
    assert ei.value.problems == [
        "feedback.refused_command: the program must be an absolute path, got 'beep'",
        "feedback.command_timeout_s: must be between 0.1 and 300, got 0",
        "feedback.colour: unknown key (allowed: command_timeout_s, display, gpio, outcomes, "
            "refused_command)"]
    with pytest.raises(ConfigError, match="feedback.refused_command: expected a non-empty list"):
        parse_config(_config({"refused_command": "/usr/bin/beep"}), base_dir=tmp_path)
