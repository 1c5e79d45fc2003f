"""``timeclock-agent resume``: the operator's conspicuous step that lets a refusing clock record.

A clock whose queue is behind its sequence mark (agent/seqmark.py) refuses every tap. On a
stopped agent, ``resume`` continues the chain after the highest seq the queue, the mark or the
operator knows (``--after-seq``: the collector's last recorded seq of this clock, from
``timeclock-collector device list``) or the collector signed (``--from-collector``: its signed
record of this clock's last (seq, hash), agent/resume_client.py, verified with the log key, so
the next punch links to the recorded one), never inside it, and appends the loss to ``seqloss.json``
in the state directory (the seqs that were committed on the clock and are gone from its queue;
those the collector did not record are lost). Nothing is deleted. The command prints what it did
and is logged at ERROR level by the outbox; run it only after reading docs/operations.md
"A clock refuses taps: sequence".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.config import load_config
from agent.errors import AgentError
from agent.keystore import load_queue

NOTHING_TO_RESUME = 3     # exit status (wire.cli uses 2 for errors)
RESUME_EPILOG = """\
Stop the agent first (systemctl stop timeclock-agent). Example:
  timeclock-agent resume -c /etc/timeclock/agent.toml --reason "SD card replaced, ticket 4711"
A clock that lost its whole state directory resumes from the collector's signed record:
  timeclock-agent resume -c /etc/timeclock/agent.toml --reason "..." --from-collector
Exit 0 when resumed, 3 when there is nothing to resume (the sequence is ok), 2 on an error.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resume`` to ``timeclock-agent``'s subcommands."""
    p = sub.add_parser("resume", help="let a clock whose queue is behind its sequence mark "
                                      "record again (records the loss)",
                       description="Continue the seq chain after the highest seq known, "
                                   "never reusing one, and record the lost range.",
                       epilog=RESUME_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, type=Path, help="agent TOML file")
    p.add_argument("--reason", required=True, help="why (kept in the loss record)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--after-seq", type=int, default=None,
                     help="the collector's last recorded seq of this clock, if higher")
    src.add_argument("--from-collector", action="store_true",
                     help="ask the collector (over MQTT, as this clock) for its signed record "
                          "of this clock's last recorded seq and hash, and continue after it")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long --from-collector waits for a valid answer (default 60)")
    p.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    from agent.service import open_outbox  # noqa: PLC0415 -- pulls in the queue

    config = load_config(args.config, check_readers=False)
    if args.after_seq is not None and args.after_seq < 0:
        raise AgentError("--after-seq must be 0 or more")
    box = open_outbox(config, load_queue(config.keys.queue_key, None))
    try:
        st = box.sequence()
        if st.state != "refusing":
            print(f"{config.device.id}: sequence {st.state} ({st.detail}); nothing to resume")
            return NOTHING_TO_RESUME
        print(f"{config.device.id}: sequence was refusing ({st.reason}): {st.detail}")
        after_seq, after_hash = args.after_seq, None
        if args.from_collector:
            from agent.resume_client import ask_collector  # noqa: PLC0415 -- pulls in paho

            answer = ask_collector(config, timeout_s=args.timeout)
            after_seq, after_hash = answer.last_seq, answer.last_hash
            print(f"the collector signed (log key {answer.log}, at {answer.at} µs): its last "
                  f"recorded punch of {answer.device} is seq {answer.last_seq}, hash "
                  f"{answer.last_hash}")
        loss = box.resume(reason=args.reason, after_seq=after_seq, after_hash=after_hash)
    finally:
        box.close()
    if loss.last >= loss.first:
        print(f"RESUMED: seqs {loss.first}..{loss.last} were committed on this clock and are "
              f"gone from its queue; those the collector did not record are LOST.")
    else:
        print("RESUMED: no seq is missing from the queue.")
    print(f"The next punch is seq {loss.last + 1}; the loss is recorded in "
          f"{config.device.state_dir / 'seqloss.json'}.")
    return 0
