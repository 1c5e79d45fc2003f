"""``timeclock-collector serve``: run the ingest pipeline (MQTT → verify → ledger → receipts)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from collector.fleet.broker_process import ManagedBroker
from collector.ingest.checkpoints import load_log_key
from collector.ledger import open_store
from collector.service.config import check_files, load_config, redact_url
from collector.service.runner import CollectorService, preflight

log = logging.getLogger("timeclock.collector")

EPILOG = """\
examples:
  timeclock-collector serve --check-config /etc/timeclock/collector.toml
  timeclock-collector serve --config /etc/timeclock/collector.toml

The config is TOML (see docs/operations.md, or collector/service/config.py for every key):
  [collector] name = "a", store = "sqlite:///var/lib/timeclock/ledger.db",
              log_key = "/etc/timeclock/log.key"
  [mqtt]      host, port, ca_cert, cert, key     (the collector's mTLS identity collector.<name>)
  [ingest]    batch_max, batch_wait_ms, max_payload_bytes, queue_max        (optional)
  [checkpoints] every_entries, every_s     [gaps] report_after_s            (optional)
  [broker]    managed = true, dir = "/var/lib/timeclock/broker"   (optional: serve starts
              Mosquitto from that directory on [mqtt] host:port, restarts it if it dies and
              stops it on shutdown; see collector/fleet/broker_process.py)
  [api]       cert, key, listen = "127.0.0.1", port = 8443, client_ca, crl   (optional: also
              serve the HTTPS API for HR, payroll and auditors; see docs/api.md)

serve runs until SIGTERM or Ctrl-C, then finishes the batch in flight (commit, receipts,
acknowledgements) and disconnects; messages not yet processed stay with the broker.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="run the collector: verify punches from MQTT into the ledger",
        description="Receive signed punches over mTLS MQTT, verify them (size, strict "
                    "decoding, device, registered key, signature), record them or quarantine "
                    "them in the ledger, and send signed receipts.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", type=Path, metavar="FILE", help="run with this TOML config")
    g.add_argument("--check-config", type=Path, metavar="FILE",
                   help="validate FILE (keys, files, key permissions) and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check_config is not None:
        cfg = load_config(args.check_config)
        check_files(cfg)
        load_log_key(cfg.collector.log_key)
        print(f"{args.check_config}: OK (collector.{cfg.collector.name}, store "
              f"{redact_url(cfg.collector.store)}, broker {cfg.mqtt.host}:{cfg.mqtt.port})")
        return 0
    cfg = load_config(args.config)
    check_files(cfg)
    preflight(cfg)      # a truncated or rewritten ledger is refused before anything serves
    broker = None
    if cfg.broker.managed and cfg.broker.dir is not None:
        broker = ManagedBroker(cfg.broker.dir, host=cfg.mqtt.host, port=cfg.mqtt.port,
                               mosquitto=cfg.broker.mosquitto)
        broker.start()
    api = api_store = api_reader = None
    try:
        if cfg.api is not None:
            # Only now the web stack (aiohttp): a collector without [api] never loads it.
            from collector.api.app import ApiThread  # noqa: PLC0415 - see the comment above

            # The API reads through its own connection; the ingest writer keeps its own.
            log_key = load_log_key(cfg.collector.log_key)
            api_store = open_store(cfg.collector.store)
            api_reader = open_store(cfg.collector.store)    # proofs: never behind a commit
            api = ApiThread(cfg.api, api_store,
                            log_keys={log_key.key_id: log_key.verify_key}, reader=api_reader)
            api.start()
            log.info("HTTPS API listening on %s:%d", cfg.api.listen, cfg.api.port)
        CollectorService(cfg).serve_forever()
    finally:
        if api is not None:
            api.stop()          # flushes the access log into the ledger
        if api_store is not None:
            api_store.close()
        if api_reader is not None:
            api_reader.close()
        if broker is not None:
            broker.stop()
    return 0
