"""``timeclock-witness``: keygen, vkey, serve (see docs/operations.md, "Running a witness").

- ``keygen --key PATH --name NAME``: a new Ed25519 witness key (0600); prints its vkey.
- ``vkey --config PATH``: the vkey to give the log's operator and the verifiers.
- ``serve --config PATH``: HTTPS until SIGTERM; sd_notify READY=1 once listening (needs the
  ``witness`` extra, aiohttp; without it ``serve`` says so in one line and exits 2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

from wire.cli import run_command, setup_logging
from wire.keys import SigningKey, load_signing_key, save_signing_key
from wire.note import COSIGNATURE_V1, NoteVerifier, check_key_name
from wire.sdnotify import Notifier
from wire.tls import server_context
from witness import WitnessError
from witness.config import WitnessConfig, load_config
from witness.core import Witness

log = logging.getLogger("timeclock.witness")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timeclock-witness",
                                description="a C2SP tlog-witness for timeclock ledgers")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="create the witness's Ed25519 key; print its vkey")
    k.add_argument("--key", type=Path, required=True)
    k.add_argument("--name", required=True, help="the witness name, e.g. auditor.example/w1")
    v = sub.add_parser("vkey", help="print the witness's verifier key")
    v.add_argument("--config", type=Path, required=True)
    s = sub.add_parser("serve", help="serve POST /add-checkpoint over HTTPS")
    s.add_argument("--config", type=Path, required=True)
    return p


def _witness(cfg: WitnessConfig) -> Witness:
    return Witness(cfg.name, load_signing_key(cfg.key), cfg.logs, cfg.state_dir)


async def _serve(cfg: WitnessConfig) -> None:
    # aiohttp only here: keygen and vkey work on a bare install (wire.cli.missing_extra)
    from aiohttp import web  # noqa: PLC0415

    from witness.server import make_app  # noqa: PLC0415

    witness = _witness(cfg)
    ctx = server_context(cfg.client_ca or cfg.tls_cert, cfg.tls_cert, cfg.tls_key,
                         require_client_cert=cfg.client_ca is not None)
    runner = web.AppRunner(make_app(witness), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.listen, cfg.port, ssl_context=ctx)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sizes = ", ".join(f"{o} at size {witness.size(o)}" for o in witness.logs)
    log.info("listening on https://%s:%d as %s; witnessing %s", cfg.listen, cfg.port,
             witness.verifier.vkey(), sizes)
    notifier = Notifier()
    notifier.ready(f"witnessing {len(witness.logs)} log(s)")
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        await runner.cleanup()


def _command(args: argparse.Namespace) -> int:
    if args.command == "keygen":
        name = check_key_name(args.name, "witness name")
        key = SigningKey.generate()
        save_signing_key(args.key, key)
        print(NoteVerifier(name, key.verify_key, COSIGNATURE_V1).vkey())
        return 0
    cfg = load_config(args.config)
    if args.command == "vkey":
        print(NoteVerifier(cfg.name, load_signing_key(cfg.key).verify_key,
                           COSIGNATURE_V1).vkey())
        return 0
    asyncio.run(_serve(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    return run_command("timeclock-witness", lambda: _command(args), (WitnessError, OSError),
                       extra="witness")


if __name__ == "__main__":
    raise SystemExit(main())
