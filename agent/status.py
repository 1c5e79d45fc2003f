"""The agent's health snapshot: one dict, written atomically to a file and shown by ``status``.

The same snapshot feeds the retained MQTT status topic (DESIGN.md §4): online/offline, queue
depth, oldest unacked time, clock state, reader states, storage state, version. Invariants:
the file is 0600 whatever the umask, like every file the agent writes (issue 12 item 6; it
holds no credential and no key path), lives in a 0700 folder, and names the writer's pid
so ``status`` can tell a stale file. It is normally replaced with rename(2) (a reader never
sees half a file). It is padded with blanks to whole 4 KiB blocks with at least
:data:`STATUS_SLACK_BYTES` to spare, so that when the disk is full and no new file can be
written, the snapshot is rewritten *in place* into the blocks the file already owns (a reader
that catches that rewrite half-done retries); only a snapshot that no longer fits is dropped,
and then ``status`` sees a stale file next to a live pid and says so.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

log = logging.getLogger(__name__)

STATUS_VERSION = 1
STATUS_BLOCK_BYTES = 4096
STATUS_SLACK_BYTES = 2048
_READ_TRIES = 5


@functools.cache
def agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 -- rarely used

    try:
        return version("timeclock")
    except PackageNotFoundError:
        return "0+unknown"


def _pad(data: bytes, size: int) -> bytes:
    return data + b" " * (size - len(data) - 1) + b"\n"


def write_status(path: Path, snapshot: dict[str, Any]) -> str:
    """Replace ``path`` with ``snapshot`` as JSON: atomically, or in place if the disk is full.
    Return ``"replaced"`` or ``"in-place"``; raise :class:`AgentError` if neither worked."""
    data = json.dumps(snapshot, sort_keys=True, indent=1).encode() + b"\n"
    blocks = -(-(len(data) + STATUS_SLACK_BYTES) // STATUS_BLOCK_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _pad(data, blocks * STATUS_BLOCK_BYTES))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)      # a half-written temp file holds the space we lack
        except OSError:
            log.debug("cannot remove %s", tmp)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise AgentError(f"{path}: cannot write status file: {e.strerror or e}") from e
        _rewrite_in_place(path, data, e)
        return "in-place"
    return "replaced"


def _rewrite_in_place(path: Path, data: bytes, cause: OSError) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)      # no O_CREAT, no O_TRUNC: keep the file's blocks
        try:
            size = os.fstat(fd).st_size
            if len(data) >= size:
                raise AgentError(f"{path}: disk full ({cause.strerror}) and the status "
                                 f"({len(data)} bytes) does not fit in the file's {size} "
                                 "bytes; kept the previous status")
            os.pwrite(fd, _pad(data, size), 0)
        finally:
            os.close(fd)
    except OSError as e:
        raise AgentError(f"{path}: disk full ({cause.strerror}) and cannot rewrite the status "
                         f"file in place: {e.strerror or e}") from e


@dataclass(frozen=True, slots=True)
class StatusFile:
    snapshot: dict[str, Any]
    live: bool          # the writer is running and the file is fresh
    age_s: float
    writer_alive: bool = False   # the pid that wrote it still exists (fresh or not)


def read_status(path: Path, *, now_us: int, stale_after_s: float) -> StatusFile | None:
    """The last snapshot, or None if there is none. ``live`` says whether its writer runs."""
    for attempt in range(_READ_TRIES):
        try:
            snap = json.loads(path.read_text(encoding="utf-8"))
            break
        except FileNotFoundError:
            return None
        except ValueError as e:
            # Caught an in-place rewrite (disk full) half-done: read again shortly.
            if attempt == _READ_TRIES - 1:
                raise AgentError(f"{path}: cannot read status file: {e}") from e
            time.sleep(0.02)
        except OSError as e:
            raise AgentError(f"{path}: cannot read status file: {e}") from e
    if not isinstance(snap, dict):
        raise AgentError(f"{path}: status file is not a JSON object")
    at = snap.get("at_us")
    age_s = (now_us - at) / 1e6 if isinstance(at, int) else float("inf")
    pid = snap.get("pid")
    alive = isinstance(pid, int) and Path(f"/proc/{pid}").exists()
    live = alive and snap.get("state") == "running" and age_s <= stale_after_s
    return StatusFile(snap, live, age_s, alive and snap.get("state") == "running")


def _age(now_us: int, at_us: Any) -> str:
    if not isinstance(at_us, int):
        return "never"
    s = max(0, (now_us - at_us) // 1_000_000)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}min ago"
    return f"{s // 3600}h ago"


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return "? bytes"
    if n < 10 * 1024:
        return f"{n} bytes"
    if n < 10 * 1024 * 1024:
        return f"{n // 1024} KiB"
    return f"{n // (1024 * 1024)} MiB"


def storage_line(storage: Any, *, now_us: int, free_now: int | None = None) -> str:
    """``storage: …`` for ``status``: the agent's view, and the free space measured now."""
    now = "" if free_now is None else f"; {_bytes(free_now)} free now"
    if not isinstance(storage, dict):
        return f"storage:       unknown{now}"
    state = storage.get("state", "?")
    refused = storage.get("refused_taps", 0)
    if state == "full":
        head = f"FULL since {_age(now_us, storage.get('since_us'))}: taps are REFUSED"
    else:
        head = f"{state} ({_bytes(storage.get('free_bytes'))} free when the agent looked)"
    return f"storage:       {head}; {refused} tap(s) refused since start{now}"


def sequence_line(seq: Any, *, now_us: int) -> str:
    """``sequence: …`` for ``status``: the queue against its sequence mark (agent.seqmark)."""
    if not isinstance(seq, dict):
        return "sequence:      unknown"
    losses = seq.get("losses") or []
    lost = ""
    if losses:
        last = losses[-1]
        rng = (f"seqs {last.get('first')}..{last.get('last')}"
               if last.get("last", 0) >= last.get("first", 1) else "no seq")
        lost = f"; {len(losses)} resume(s), last {_age(now_us, last.get('at_us'))}: {rng} lost"
    if seq.get("state") == "refusing":
        # A lost state: only the collector knows the last seq (docs/protocol.md §13.13).
        how = " --from-collector" if seq.get("reason") == "state-lost" else ""
        return (f"sequence:      REFUSING TAPS ({seq.get('reason')}) since "
                f"{_age(now_us, seq.get('since_us'))}: {seq.get('detail', '')}; "
                f"{seq.get('refused_taps', 0)} tap(s) refused; run `timeclock-agent resume{how}` "
                f"(docs/operations.md){lost}")
    return f"sequence:      {seq.get('state', '?')} at seq {seq.get('mark_seq')}{lost}"


def _inclusion_part(inc: Any, now_us: int) -> str:
    """The inclusion checks of the clock's own punches (agent.inclusion), for the witness
    line: loud while any failed."""
    if not isinstance(inc, dict):
        return ""
    counts = (f"{inc.get('checked', 0)} punch(es) proven in the log, "
              f"{inc.get('pending', 0)} pending")
    if inc.get("failed"):
        return (f"; INCLUSION CHECK FAILED x{inc['failed']} (last {inc.get('reason')} "
                f"{_age(now_us, inc.get('since_us'))}: {inc.get('detail', '')}); {counts}")
    return f"; {counts}"


def witness_line(witness: Any, *, now_us: int) -> str:
    """``witness: …`` for ``status``: the clock as a witness of the log (agent.witness)."""
    if not isinstance(witness, dict):
        return "witness:       unknown (no publisher)"
    return _witness_head(witness, now_us) + _inclusion_part(witness.get("inclusion"), now_us)


def _witness_head(witness: dict[str, Any], now_us: int) -> str:
    state, size = witness.get("state"), witness.get("size")
    if state == "refusing":
        return (f"witness:       REFUSING to cosign ({witness.get('reason')}) since "
                f"{_age(now_us, witness.get('since_us'))}: {witness.get('detail', '')}; "
                f"holds size {size}; {witness.get('refusals', 0)} refusal(s)")
    if state == "broken":
        return f"witness:       BROKEN, cosigning nothing: {witness.get('detail', '')}"
    if state == "ok":
        last = f"; {witness['detail']}" if witness.get("detail") else ""
        return (f"witness:       ok, cosigned size {size} "
                f"{_age(now_us, witness.get('cosigned_at'))}; "
                f"{witness.get('refusals', 0)} refusal(s){last}")
    return "witness:       no checkpoint seen yet"


_CERT_HEADS = {
    "revoked": "REVOKED by the site CA",
    "expired": "EXPIRED",
    "not-yet-valid": "NOT YET VALID (clock behind?)",
    "unknown-ca": "UNKNOWN CA",
    "key-mismatch": "KEY DOES NOT MATCH",
    "unreadable": "UNREADABLE",
    "broker-untrusted": "BROKER NOT TRUSTED",
    "tls-refused": "REFUSED by the broker",
}


def certificate_line(cert: Any, *, now_us: int) -> str:
    """``certificate: …`` for ``status``: the clock's TLS certificate state (agent.certstate);
    loud, with what to do, while the clock cannot connect because of it."""
    if not isinstance(cert, dict):
        return "certificate:   unknown"
    state = cert.get("state", "?")
    detail = cert.get("detail", "")
    if state == "ok":
        return "certificate:   ok"
    if state == "expiring":
        return f"certificate:   expiring soon: {detail}"
    head = _CERT_HEADS.get(str(state), str(state).upper())
    return (f"certificate:   {head} since {_age(now_us, cert.get('since_us'))}; the clock "
            f"cannot connect and keeps queueing: {detail}")


def feedback_line(fb: Any) -> str | None:
    """``feedback: …`` for ``status``: outcomes signalled and failing backends (agent.feedback);
    None when nothing is configured or signalled."""
    if not isinstance(fb, dict) or not (fb.get("signals") or fb.get("backends")):
        return None
    signals = fb.get("signals") or {}
    said = ", ".join(f"{k} {v}" for k, v in sorted(signals.items())) or "none yet"
    failing = [f"{b.get('kind')} for {b.get('outcome')}: {b.get('failures')} failed"
               for b in fb.get("backends") or [] if b.get("failures")]
    ignored = fb.get("badge_messages_ignored") or 0
    return (f"feedback:      signalled {said}"
            + (f"; FAILING {'; '.join(failing)} (see the log)" if failing else "")
            + (f"; {ignored} badge outcome message(s) ignored" if ignored else ""))


def render(snap: dict[str, Any], *, now_us: int, live: bool, writer_alive: bool = False,
           free_now: int | None = None) -> str:
    """Human text of a snapshot for ``timeclock-agent status``."""
    q = snap.get("queue") or {}
    agent = ("running" if live else
             "running, but its status file is STALE (disk full?)" if writer_alive else
             "NOT RUNNING")
    lines = [
        f"device:        {snap.get('device', '?')}",
        f"agent:         {agent} (pid {snap.get('pid', '?')}, "
        f"state {snap.get('state', '?')}, snapshot {_age(now_us, snap.get('at_us'))})",
        storage_line(snap.get("storage"), now_us=now_us, free_now=free_now),
        sequence_line(snap.get("sequence"), now_us=now_us),
        f"clock:         {snap.get('clock', '?')}",
        f"queue depth:   {q.get('depth', '?')} unacked (last seq {q.get('last_seq', '?')}, "
        f"set aside {q.get('set_aside', '?')})",
        f"oldest unacked: {_age(now_us, q.get('oldest_created_us'))}",
    ]
    pub = snap.get("publisher") or {}
    lines.append(f"publisher:     {pub.get('status', 'disabled')}"
                 + (f" ({pub['detail']})" if pub.get("detail") else ""))
    lines.append(f"last receipt:  {_age(now_us, pub.get('last_receipt_us'))}")
    if pub:
        lines.append(certificate_line(pub.get("certificate"), now_us=now_us))
    lines.append(witness_line(pub.get("witness"), now_us=now_us))
    if (fb := feedback_line(snap.get("feedback"))) is not None:
        lines.append(fb)
    for name, r in sorted((snap.get("readers") or {}).items()):
        lines.append(f"reader {name}: {r.get('status', '?')} — {r.get('detail', '')} "
                     f"(taps {r.get('taps', 0)}, read errors {r.get('read_errors', 0)}, "
                     f"reopens {r.get('reopens', 0)})")
    return "\n".join(lines)
