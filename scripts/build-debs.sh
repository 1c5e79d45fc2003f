#!/usr/bin/env bash
# Builds the Debian packages of timeclock from the repository's HEAD commit (or, with
# --worktree, from the working tree as it is):
#   timeclock-agent      for the clocks: arm64 and armhf (Raspberry Pi OS) and amd64
#   timeclock-collector  for the server: amd64
# Each vendors its Python libraries (wheels only, nothing compiled; packaging/vendor.py) under
# /opt/timeclock/<agent|collector>/lib, run by /usr/bin wrappers with Debian's python3, and
# ships its systemd units, a sysusers.d user (timeclock), a tmpfiles.d state folder and the docs.
#
#   scripts/build-debs.sh                         # every package, every architecture
#   scripts/build-debs.sh --arch amd64            # only amd64 (what this machine installs)
#   scripts/build-debs.sh --package agent --arch armhf --out /tmp/debs
#
# Output: build/debs/*.deb (default --out). Downloaded wheels are cached in build/debs/cache
# (build/ is ignored by git): a second build with the same dependencies downloads nothing.
# Needs: dpkg-deb (in dpkg), flock (util-linux), python3 3.11 with pip (.venv, or a venv it
# makes in build/). Concurrent builds in one checkout wait for each other.
# DEB_COMPRESSION_LEVEL=1 builds faster (xz -1; the tests use it), default 6.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

archs="amd64 arm64 armhf"
packages="agent collector"
out="$root/build/debs"
from=head
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) archs="${2//,/ }"; shift 2 ;;
    --package) packages="${2//,/ }"; shift 2 ;;
    --out) out="$(realpath -m "$2")"; shift 2 ;;
    --worktree) from=worktree; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build-debs: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for a in $archs; do
  case "$a" in amd64|arm64|armhf) ;; *) echo "build-debs: unknown arch $a (amd64, arm64, armhf)" >&2; exit 2 ;; esac
done
for p in $packages; do
  case "$p" in agent|collector) ;; *) echo "build-debs: unknown package $p (agent, collector)" >&2; exit 2 ;; esac
done

umask 022
work="$root/build/debs/work"
cache="$root/build/debs/cache"
mkdir -p "$out" "$cache"
# One build at a time per checkout (the test suite runs the amd64 and the arm builds in parallel
# workers): they share the work folder and the wheel cache. The lock goes with the process.
exec 9>"$root/build/debs/.lock"
flock 9
rm -rf "$work"
mkdir -p "$work"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need_apt=()
command -v dpkg-deb >/dev/null 2>&1 || need_apt+=(dpkg)

# The Python that runs pip and byte-compiles: 3.11 like the targets' python3 (same .pyc magic).
py="${PYTHON:-}"
if [ -z "$py" ] && [ -x .venv/bin/python ]; then py="$root/.venv/bin/python"; fi
if [ -z "$py" ]; then
  py="$root/build/debs/venv/bin/python"
  if [ ! -x "$py" ]; then
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
  fi
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "build-debs: installing Debian packages: ${need_apt[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi
if [ ! -x "$py" ]; then /usr/bin/python3 -m venv "$root/build/debs/venv"; fi
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "build-debs: $py is not Python 3.11 (the targets' python3; set PYTHON=)" >&2; exit 1; }

# The source tree: HEAD (what a release is), or the working tree.
src="$work/src"
mkdir -p "$src"
if [ "$from" = head ]; then
  git archive HEAD | tar -x -C "$src"
  rev="$(git rev-list --count HEAD).$(git rev-parse --short=10 HEAD)"
else
  # Tracked and new files, not what .gitignore names (keys, .venv, build/).
  git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -c 2>/dev/null | tar -x -C "$src"
  rev="$(git rev-list --count HEAD).$(git rev-parse --short=10 HEAD).worktree"
fi
upstream="$("$py" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$src/pyproject.toml")"
version="$upstream+git$rev"

echo "build-debs: timeclock $version: building the wheel"
unreachable='NewConnectionError|NameResolutionError|Temporary failure in name resolution|Network is unreachable'
if ! "$py" -m pip --disable-pip-version-check wheel --quiet --no-deps -w "$work/dist" "$src" \
    > "$work/wheel.log" 2>&1; then
  tail -30 "$work/wheel.log" >&2
  if grep -qE "$unreachable" "$work/wheel.log"; then
    echo "build-debs: cannot reach PyPI: building timeclock's wheel needs setuptools from it" \
         "(and a first build every dependency's wheels; later ones come from $cache)" >&2
  fi
  exit 1
fi
wheel="$(ls "$work"/dist/timeclock-*.whl)"

write_wrapper() {   # write_wrapper FILE PACKAGE MODULE
  cat > "$1" <<WRAPPER
#!/usr/bin/python3 -IB
# $(basename "$1") from the $2 package: Debian's python3 (isolated: no user site, no
# PYTHON* variables; -B: writes no .pyc, they are shipped) with the vendored libraries first.
import sys

sys.path.insert(0, "/opt/timeclock/${2#timeclock-}/lib")
from $3 import main  # noqa: E402

sys.exit(main())
WRAPPER
  chmod 0755 "$1"
}

fill() {   # fill TEMPLATE DEST: the maintainer script with this package's names
  sed -e "s|@PACKAGE@|$pkg|g" -e "s|@UNITS@|$units|g" -e "s|@STATEDIR@|$statedir|g" "$1" > "$2"
  chmod 0755 "$2"
}

for p in $packages; do
  for a in $archs; do
    if [ "$p" = collector ] && [ "$a" != amd64 ]; then continue; fi   # the server: amd64 only
    pkg="timeclock-$p"
    stage="$work/$pkg-$a"
    lib="$stage/opt/timeclock/$p/lib"
    echo "build-debs: $pkg $a"
    mkdir -p "$lib" "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
             "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d" \
             "$stage/usr/share/doc/$pkg" "$stage/etc/timeclock"
    extra_depends="$("$py" packaging/vendor.py --package "$p" --arch "$a" --source "$src" \
        --wheel "$wheel" --cache "$cache" --target "$lib" \
        --manifest "$stage/opt/timeclock/$p/VENDORED.txt")"
    # Shipped byte-compiled for 3.11: a clock never compiles at boot, and nothing writes under
    # /opt (unchecked-hash: valid whatever the files' mtimes).
    "$py" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$lib" >/dev/null \
      || { echo "build-debs: byte-compiling $lib failed" >&2; exit 1; }
    cp packaging/sysusers.conf "$stage/usr/lib/sysusers.d/$pkg.conf"
    cp "packaging/tmpfiles-$p.conf" "$stage/usr/lib/tmpfiles.d/$pkg.conf"
    cp "$src/README.md" "$src"/docs/*.md "$stage/usr/share/doc/$pkg/"
    if [ "$p" = agent ]; then
      write_wrapper "$stage/usr/bin/timeclock-agent" "$pkg" agent.cli
      unit_files="timeclock-agent.service"
      statedir=/var/lib/timeclock-agent
      depends="python3 (>= 3.11), python3 (<< 3.12), systemd"
      summary="timeclock agent: badge taps to signed, queued, mTLS-published punches"
      body=" Runs on each time clock (a Raspberry Pi): reads RFID badge readers, signs
 every punch with the clock's Ed25519 key, keeps it in an encrypted queue and
 publishes it to the collector over MQTT with mutual TLS.
 .
 Python libraries are vendored under /opt/timeclock/agent (VENDORED.txt)."
    else
      write_wrapper "$stage/usr/bin/timeclock-collector" "$pkg" collector.cli.main
      write_wrapper "$stage/usr/bin/timeclock-verify" "$pkg" wire.verify_cli
      cp "$src"/docs/*.json "$stage/usr/share/doc/$pkg/" 2>/dev/null || true
      unit_files="timeclock-collector.service timeclock-broker.service timeclock-crl-refresh.service timeclock-crl-refresh.timer timeclock-retention.service timeclock-retention.timer timeclock-backup.service timeclock-backup.timer"
      statedir=/var/lib/timeclock
      # The managed broker (the single-box default) and timeclock-broker.service run Mosquitto 2;
      # broker-config/init compile its SUBSCRIBE check (collector/fleet/timeclock_acl.c).
      depends="python3 (>= 3.11), python3 (<< 3.12), systemd, mosquitto (>= 2.0), gcc | c-compiler"
      summary="timeclock collector: verified punches into a tamper-evident ledger"
      body=" Verifies signed punches from the time clocks over MQTT (mutual TLS), appends
 them to a hash-chained, Merkle-tree ledger (SQLite or PostgreSQL), sends signed
 receipts and serves HR and auditors; runs the site's CA and broker configuration.
 Includes timeclock-verify, the auditor's offline bundle check.
 .
 Python libraries are vendored under /opt/timeclock/collector (VENDORED.txt)."
    fi
    units="$unit_files"
    for u in $unit_files; do cp "$src/systemd/$u" "$stage/lib/systemd/system/$u"; done
    if [ -n "$extra_depends" ]; then depends="$depends, $extra_depends"; fi
    for s in postinst prerm postrm; do fill "packaging/debian/$s" "$stage/DEBIAN/$s"; done
    size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
    cat > "$stage/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $a
Maintainer: timeclock maintainers <timeclock@localhost>
Installed-Size: $size
Depends: $depends
Section: misc
Priority: optional
Description: $summary
$body
CONTROL
    deb="$out/${pkg}_${version}_$a.deb"
    dpkg-deb --root-owner-group -Zxz -z"${DEB_COMPRESSION_LEVEL:-6}" --build "$stage" "$deb" >/dev/null
    echo "build-debs: $deb ($(du -h "$deb" | cut -f1); depends: $depends)"
  done
done
