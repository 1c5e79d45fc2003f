"""``timeclock-collector init --kek pkcs11:…`` end to end against a real SoftHSM2 token
(control D17): the KEK is generated in the token by ``kek create --pkcs11``, ``init`` checks
it and names it in the config, a punch is recorded sealed under a data key the token wraps,
``export`` (with only ``--config``) reads it back decrypted, and ``kek rewrap`` moves the data
keys to a file KEK without touching a body. ``init`` runs in its own process as an operator
runs it; the later commands through the same CLI entry point (``main``) in this one."""

from __future__ import annotations

import sqlite3
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.ledger import KEK_ENV, open_store
from collector.ledger.kek import load_kek
from tests.collector.hsm_kit import softhsm_token, spec
from tests.collector.init_kit import new_host
from tests.collector.keyring_kit import BADGE, LOG_KEY, checkpoint, personal_store

pytestmark = [pytest.mark.subprocess]
TOKEN = "tc-kek-init"  # noqa: S105 - a token label; not test_kek.py's: a process may hold both


@pytest.fixture
def hsm(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[dict[str, Path]]:
    monkeypatch.delenv(KEK_ENV, raising=False)
    with softhsm_token(tmp_path_factory.mktemp("softhsm"), TOKEN) as pins:
        yield pins


def _bodies(db: Path) -> list[bytes]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [bytes(r[0]) for r in con.execute("SELECT body FROM bodies ORDER BY idx")]
    finally:
        con.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_d17_init_with_a_pkcs11_kek_seals_exports_and_rewraps(
        hsm: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kek_spec = spec(hsm, "init-kek", token=TOKEN)
    kek_id = f"pkcs11:{TOKEN}/init-kek"
    rc, out, err = _run(capsys, "kek", "create", "--pkcs11", kek_spec.removeprefix("pkcs11:"))
    assert (rc, out.strip()) == (0, kek_id), err

    host = new_host(tmp_path / "host")
    done = host.init("--kek", kek_spec)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{kek_id} answers" in done.stdout + done.stderr
    cfg = tomllib.loads(host.config.read_text(encoding="utf-8"))
    assert cfg["ledger"]["kek"] == kek_spec
    assert not (host.etc / "ledger.kek").exists()          # no file KEK made beside it
    rc, out, err = _run(capsys, *host.init_args("--kek", kek_spec, "--check"))
    assert rc == 0, out + err                             # the config and the token agree
    db = host.state / "ledger.db"
    url = f"sqlite://{db}"

    # A clock, the people directory and punches, appended as serve appends them: through
    # the store opened with the config's KEK (data keys wrapped by the token).
    store = open_store(url, kek=kek_spec)
    try:
        personal_store(store, tmp_path, kek=load_kek(kek_spec), origin=None)
        checkpoint(store)
    finally:
        store.close()
    sealed = _bodies(db)
    assert not any(BADGE.encode() in b for b in sealed)

    payroll = tmp_path / "payroll.csv"
    rc, _, err = _run(capsys, "export", "--store", url, "--config", str(host.config),
                      "--payroll", "--field-set", "investigation", "--out", str(payroll))
    assert rc == 0, err
    assert payroll.read_text(encoding="utf-8").count(BADGE) == 2     # opened by the token
    rc, out, err = _run(capsys, "verify", "--store", url, "--config", str(host.config),
                        "--log-key-pub", LOG_KEY.verify_key.b64, "--full", "--state",
                        str(tmp_path / "vs.json"))
    assert rc == 0, out + err
    # Without the config (and no env) the CLI says where a KEK comes from.
    rc, _, err = _run(capsys, "export", "--store", url, "--payroll", "--out",
                      str(tmp_path / "no.csv"))
    assert rc == 2
    assert "this ledger is encrypted at rest; give its KEK with" in err
    assert "Traceback" not in err

    # Rewrap to a file KEK: the token's KEK (from the config) unwraps, the new one wraps.
    new = tmp_path / "new.kek"
    assert _run(capsys, "kek", "create", "--file", str(new))[0] == 0
    rc, out, err = _run(capsys, "kek", "rewrap", "--store", url, "--config",
                        str(host.config), "--to", f"file:{new}")
    assert rc == 0, err
    assert int(out.strip()) >= 3                    # the people's and the clock's data keys
    assert f"to {load_kek(f'file:{new}').kek_id}" in err
    assert _bodies(db)[:len(sealed)] == sealed      # no body touched
    rc, _, err = _run(capsys, "export", "--store", url, "--config", str(host.config),
                      "--payroll", "--out", str(tmp_path / "stale.csv"))
    assert rc == 2
    assert f"not by the configured KEK '{kek_id}'" in err
    payroll2 = tmp_path / "payroll2.csv"
    rc, _, err = _run(capsys, "export", "--store", url, "--kek", f"file:{new}", "--payroll",
                      "--field-set", "investigation", "--out", str(payroll2))
    assert rc == 0, err
    assert payroll2.read_text(encoding="utf-8").count(BADGE) == 2
