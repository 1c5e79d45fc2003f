#!/usr/bin/env bash
# Installs what timeclock needs on a fresh Debian / Raspberry Pi OS machine, idempotently:
#   - Debian packages: python3-venv, mosquitto, prometheus (and, with --with-postgres, what the tests
#     run: PostgreSQL, Go, curl, chromium + chromedriver, poppler-utils, SoftHSM2, Node.js and npm)
#   - a virtualenv in .venv with timeclock installed editable with its dev extras.
# Uses sudo when not root. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

with_postgres=0
for arg in "$@"; do
  case "$arg" in
    --with-postgres) with_postgres=1 ;;
    *) echo "bootstrap: unknown option $arg" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "bootstrap: timeclock needs Python >= 3.11 (Debian 12 / Raspberry Pi OS Bookworm)" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
# prometheus: promtool checks monitoring/ and the e2e tests run a real Prometheus
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "$with_postgres" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
# the tests' third-party C2SP check (tests/interop): Go and golang.org/x/mod's sources;
# curl: docs/operations.md's runbook (tests/docs) calls the API with it, as an operator would
if [ "$with_postgres" = 1 ]; then
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v go >/dev/null 2>&1 || missing+=(golang-go)
  [ -f /usr/share/gocode/src/golang.org/x/mod/sumdb/tlog/tlog.go ] || missing+=(golang-golang-x-mod-dev)
  # browser tests (sign-in, console): Debian's chromium and chromedriver; PDF pages to images
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
  # key-encryption keys in a PKCS#11 token: SoftHSM2
  [ -f /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
  # the OIDC provider the sign-in tests run (Node.js oidc-provider from the npm registry)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # policy-rc.d or no systemd: the packaged services may not start; we run our own instances.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# The tests' OIDC provider: npm packages pinned by tests/fixtures/oidc/package-lock.json.
oidc=tests/fixtures/oidc
if [ "$with_postgres" = 1 ] && [ -f "$oidc/package-lock.json" ] &&
   [ ! -d "$oidc/node_modules/oidc-provider" ]; then
  echo "bootstrap: installing the test OIDC provider (npm ci in $oidc)"
  mkdir -p .venv
  if ! npm ci --prefix "$oidc" --no-audit --no-fund > .venv/npm.log 2>&1; then
    tail -20 .venv/npm.log >&2
    echo "bootstrap: npm ci failed; the log is in .venv/npm.log" >&2
    exit 1
  fi
fi

stamp=.venv/.timeclock-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages into .venv (log: .venv/pip.log)"
  if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
         .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]'; } \
       > .venv/pip.log 2>&1; then
    tail -40 .venv/pip.log >&2
    echo "bootstrap: pip install failed; the whole log is in .venv/pip.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

# The tests' third-party C2SP witness (tests/interop/aics_kit.py): two pure-Python wheels from
# PyPI, kept out of the venv (they declare Python >= 3.12; the tests run them on 3.11).
interop=.venv/interop
if [ "$with_postgres" = 1 ] && { [ ! -f "$interop/aics_witness-0.1.0-py3-none-any.whl" ] ||
                                 [ ! -f "$interop/aics_tlog-0.2.1-py3-none-any.whl" ]; }; then
  echo "bootstrap: downloading the interop test witness (aics-witness) into $interop"
  if ! .venv/bin/python -m pip download --disable-pip-version-check -q --no-deps \
         --python-version 3.12 --only-binary=:all: -d "$interop" \
         aics-witness==0.1.0 aics-tlog==0.2.1 >> .venv/pip.log 2>&1; then
    tail -20 .venv/pip.log >&2
    echo "bootstrap: downloading aics-witness failed; the log is in .venv/pip.log" >&2
    exit 1
  fi
fi
