#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, then lint, types and the suite.
# Real Mosquitto and PostgreSQL instances are started by the test fixtures on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --with-postgres
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy (strict: agent/ collector/ wire/)"
.venv/bin/mypy
echo "== import contracts"; .venv/bin/lint-imports
echo "== pytest"
# Two or more workers (one per core, at most 4): the suite waits on real services more than it
# computes; every fixture takes its own ports and directories.
.venv/bin/python -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --durations=25 "$@"
