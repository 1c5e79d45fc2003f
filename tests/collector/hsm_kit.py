"""A real SoftHSM2 token for the PKCS#11 KEK tests (tests/collector/test_kek.py,
test_kek_init.py): a fresh token directory in a temp dir, ``SOFTHSM2_CONF`` pointing at it
while in use (subprocesses inherit it), and the user PIN in a 0600 file (a wrong one too)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN, PIN, SO_PIN = "tc-kek-test", "314159", "271828"


@contextmanager
def softhsm_token(base: Path, token: str = TOKEN) -> Iterator[dict[str, Path]]:
    """Initialise ``token`` under ``base``; yields {"pin", "wrong_pin"} (PIN files)."""
    if not Path(SOFTHSM).exists() or shutil.which("softhsm2-util") is None:
        pytest.fail("SoftHSM2 is not installed (apt-get install softhsm2; scripts/bootstrap.sh)")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    pin = base / "user.pin"
    pin.write_text(PIN + "\n")
    pin.chmod(0o600)
    wrong = base / "wrong.pin"
    wrong.write_text("000000\n")
    wrong.chmod(0o600)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", token,  # noqa: S607 - Debian's tool on PATH
                        "--pin", PIN, "--so-pin", SO_PIN], check=True, capture_output=True,
                       timeout=60)
        yield {"pin": pin, "wrong_pin": wrong}


def spec(hsm: dict[str, Path], key: str, *, pin: str = "pin",
         token: str = TOKEN) -> str:  # noqa: S107 - a token label, not a secret
    """A ``pkcs11:`` KEK spec (collector.ledger.kek) for ``key`` in the token."""
    return f"pkcs11:module={SOFTHSM};token={token};key={key};pin-file={hsm[pin]}"
