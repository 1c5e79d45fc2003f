#!/usr/bin/env bash
# The README's first command: install what is missing, then run a whole site on this machine
# (CA, Mosquitto with mTLS, collector, three clocks, a broker outage, verification).
#   bash scripts/demo.sh                      # 60 s of badge taps, 3 clocks, under run/site/
#   bash scripts/demo.sh --duration-s 20      # any `python -m lab` option (--help lists them)
# Ctrl-C stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m lab --dir run/site "$@"
