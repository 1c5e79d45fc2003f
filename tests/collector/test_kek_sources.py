"""Every ``--store`` command finds an encrypted ledger's KEK the same way (collector.cli.shared
.ledger_kek; control D17): ``--kek`` > ``$TIMECLOCK_LEDGER_KEK`` > ``[ledger] kek`` of
``--config``; with none of the three it is refused naming them, exit 2, no traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from collector.cli.main import build_parser, main
from collector.ledger import KEK_ENV
from collector.ledger.kek import create_file_kek, load_kek
from collector.ledger.sqlite import SQLiteStore
from tests.collector.keyring_kit import BADGE, LOG_KEY, personal_store

NO_KEK = "this ledger is encrypted at rest; give its KEK with --kek SPEC, $TIMECLOCK_LEDGER_KEK"


@pytest.fixture
def keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    """A SQLite ledger sealed under a file KEK, a collector config naming that KEK, and a
    second KEK that wraps nothing of it; no KEK in the environment."""
    monkeypatch.delenv(KEK_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    create_file_kek(tmp_path / "ledger.kek")
    create_file_kek(tmp_path / "other.kek")
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    try:
        personal_store(store, tmp_path, kek=load_kek(f"file:{tmp_path / 'ledger.kek'}"),
                       origin=None)
    finally:
        store.close()
    config = tmp_path / "collector.toml"
    config.write_text(f'[collector]\nstore = "sqlite://{db}"\n\n[ledger]\n'
                      f'kek = "file:{tmp_path / "ledger.kek"}"\noutage_max_s = 60\n',
                      encoding="utf-8")
    return f"sqlite://{db}", config, tmp_path / "other.kek"


def _commands(url: str, out: Path) -> dict[str, list[str]]:
    return {
        "export": ["export", "--store", url, "--payroll", "--field-set", "investigation",
                   "--out", str(out), "--force"],
        "verify": ["verify", "--store", url, "--log-key-pub", LOG_KEY.verify_key.b64,
                   "--full"],
        "retention plan": ["retention", "plan", "--store", url],
        "people list": ["people", "list", "--store", url],
    }


def test_d17_store_commands_take_the_kek_from_the_config(
        keyed: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    url, config, _ = keyed
    out = tmp_path / "payroll.csv"
    for name, argv in _commands(url, out).items():
        assert main([*argv, "--config", str(config)]) == 0, name
        err = capsys.readouterr().err
        assert "Traceback" not in err, name
    assert BADGE in out.read_text(encoding="utf-8")         # decrypted with the config's KEK


def test_d17_without_any_source_the_three_are_named(
        keyed: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    url, _, _ = keyed
    for name, argv in _commands(url, tmp_path / "payroll.csv").items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert NO_KEK in err, (name, err)
        assert "[ledger] kek in the collector config named by --config FILE" in err
        assert "Traceback" not in err, name
    assert not (tmp_path / "payroll.csv").exists()


def test_d17_the_flag_beats_the_environment_which_beats_the_config(
        keyed: tuple[str, Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, config, other = keyed
    right = f"file:{config.parent / 'ledger.kek'}"
    plan = ["retention", "plan", "--store", url, "--config", str(config)]
    wrong = load_kek(f"file:{other}").kek_id
    monkeypatch.setenv(KEK_ENV, f"file:{other}")             # the environment: a wrong KEK
    assert main(plan) == 2                                     # …beats the config's right one
    assert f"not by the configured KEK '{wrong}'" in capsys.readouterr().err
    assert main([*plan, "--kek", right]) == 0                  # the flag beats the environment
    capsys.readouterr()
    monkeypatch.setenv(KEK_ENV, right)
    assert main([*plan, "--kek", f"file:{other}"]) == 2        # a wrong flag beats a right env
    assert f"not by the configured KEK '{wrong}'" in capsys.readouterr().err


def test_a_config_with_a_bad_ledger_section_is_refused_with_its_key_path(
        keyed: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    url, _, _ = keyed
    bad = tmp_path / "bad.toml"
    bad.write_text('[ledger]\nkek = "/no/scheme.kek"\nsurprise = 1\n', encoding="utf-8")
    assert main(["retention", "plan", "--store", url, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ledger.kek" in err
    assert "ledger.surprise" in err
    assert "Traceback" not in err


def test_every_store_command_has_the_kek_sources() -> None:
    """Each parser with ``--store`` (but init, which makes the config) has --kek and
    --config, so the helper's three sources reach every command."""
    seen: list[str] = []

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        opts = p._option_string_actions           # noqa: SLF001 - argparse has no public walk
        if "--store" in opts and name != "init":
            seen.append(name)
            assert "--kek" in opts, name
            assert "--config" in opts, name
        for a in p._actions:                      # noqa: SLF001
            if isinstance(a, argparse._SubParsersAction):     # noqa: SLF001
                for sub, sp in a.choices.items():
                    walk(sp, f"{name} {sub}".strip())
    walk(build_parser(), "")
    assert {"export", "verify", "retention plan", "erase", "backup", "restore",
            "people list", "evidence", "timesheet", "kek rewrap"} <= set(seen)
