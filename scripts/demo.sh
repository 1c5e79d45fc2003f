#!/usr/bin/env bash
# The README's first command: install what is missing, then run a whole site on this machine
# (CA, Mosquitto with mTLS, collector, three clocks, a broker outage, verification).
#   bash scripts/demo.sh                      # 60 s of badge taps, 3 clocks, under run/site/
#   bash scripts/demo.sh --duration-s 20      # any `python -m lab` option (--help lists them)
#   bash scripts/demo.sh --api --postgres --collectors 2 --witness   # the whole product: the
#       HR API with one authenticated request, the ledger on PostgreSQL (initdb/pg_ctl; needs
#       the postgresql package: bash scripts/bootstrap.sh --with-postgres), two collectors on
#       the shared subscription, a timeclock-witness the collectors cosign with
# Ctrl-C stops every process it started. TIMECLOCK_DEMO_NO_BOOTSTRAP=1 skips the install step
# (the tests run the demo from an installed checkout); so does --help once .venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
help=0
for arg in "$@"; do
  case "$arg" in -h|--help) help=1 ;; esac
done
if [ "${TIMECLOCK_DEMO_NO_BOOTSTRAP:-0}" != 1 ] && ! { [ "$help" = 1 ] && [ -x .venv/bin/python ]; }; then
  bash scripts/bootstrap.sh
fi
exec .venv/bin/python -m lab --dir run/site "$@"
