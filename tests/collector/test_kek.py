"""Key-encryption keys (collector.ledger.kek, DESIGN.md §8.6; control D17): every backend round
trips, refuses a wrong key, a wrong aad and a damaged blob, and says clearly what is wrong with
a spec; the PKCS#11 key lives in a real SoftHSM2 token made for this module and cannot be read
out of it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest

from collector import KekError, KeyringError
from collector.cli.main import main
from collector.ledger import kek as keks
from collector.ledger import open_store
from collector.ledger.base import EventFact
from collector.ledger.sqlite import SQLiteStore
from tests.collector.hsm_kit import SOFTHSM, TOKEN, softhsm_token, spec
from tests.collector.ledger_kit import T0, Clock

pytestmark = [pytest.mark.subprocess]      # softhsm2-util initialises the module's token

DEK, AAD = bytes(range(32)), b"dek-7|subject:e-42|period:2026-11"


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A fresh SoftHSM2 token in a temp dir (SOFTHSM2_CONF for this module), its PIN file."""
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as pins:
        yield pins


@pytest.fixture(scope="module")
def hsm_kek(hsm: dict[str, Path]) -> keks.Pkcs11Kek:
    return keks.create_pkcs11_kek(spec(hsm, "kek-a"))


@pytest.fixture(scope="module")
def hsm_kek_b(hsm: dict[str, Path]) -> keks.Pkcs11Kek:
    return keks.create_pkcs11_kek(spec(hsm, "kek-b"))


@pytest.fixture
def file_kek(tmp_path: Path) -> keks.FileKek:
    return keks.create_file_kek(tmp_path / "kek.key")


# -- round trips -------------------------------------------------------------------------------

def test_d17_file_kek_round_trip_and_format(tmp_path: Path) -> None:
    made = keks.create_file_kek(tmp_path / "kek.key")
    assert stat.S_IMODE((tmp_path / "kek.key").stat().st_mode) == 0o600
    loaded = keks.load_kek(f"file:{tmp_path / 'kek.key'}")
    assert loaded.kek_id == made.kek_id
    assert loaded.kek_id.startswith("file:")
    assert len(loaded.kek_id) == len("file:") + 16
    wrapped = made.wrap(DEK, AAD)
    assert len(wrapped) == 73
    assert wrapped[0] == keks.V_XCHACHA
    assert DEK not in wrapped
    assert loaded.unwrap(wrapped, AAD) == DEK
    assert made.wrap(DEK, AAD) != wrapped           # a fresh random nonce each time


def test_d17_credential_kek_is_the_file_kek(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    made = keks.create_file_kek(tmp_path / "kek.key")
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copyfile(tmp_path / "kek.key", creds / "timeclock-kek")
    (creds / "timeclock-kek").chmod(0o400)          # as systemd's LoadCredential= leaves it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cred = keks.load_kek("credential:timeclock-kek")
    assert cred.kek_id == made.kek_id
    assert cred.unwrap(made.wrap(DEK, AAD), AAD) == DEK


def test_d17_pkcs11_kek_round_trip(hsm: dict[str, Path], hsm_kek: keks.Pkcs11Kek) -> None:
    assert hsm_kek.kek_id == f"pkcs11:{TOKEN}/kek-a"
    wrapped = hsm_kek.wrap(DEK, AAD)
    assert len(wrapped) == 61
    assert wrapped[0] == keks.V_AES_GCM
    assert DEK not in wrapped
    again = keks.load_kek(spec(hsm, "kek-a"))       # a second session on the same key
    assert again.kek_id == hsm_kek.kek_id
    assert again.unwrap(wrapped, AAD) == DEK
    assert hsm_kek.unwrap(again.wrap(DEK, AAD), AAD) == DEK


def test_d17_rewrap_moves_a_key_between_backends(hsm_kek: keks.Pkcs11Kek,
                                                 file_kek: keks.FileKek,
                                                 tmp_path: Path) -> None:
    other = keks.create_file_kek(tmp_path / "new.key")
    under_file = file_kek.wrap(DEK, AAD)
    under_hsm = keks.rewrap(file_kek, hsm_kek, under_file, AAD)
    assert hsm_kek.unwrap(under_hsm, AAD) == DEK
    under_other = keks.rewrap(hsm_kek, other, under_hsm, AAD)
    assert other.unwrap(under_other, AAD) == DEK
    with pytest.raises(KekError, match="does not unwrap"):
        keks.rewrap(file_kek, other, under_other, AAD)      # not wrapped by file_kek


# -- refusals ----------------------------------------------------------------------------------

def _flip(blob: bytes, i: int) -> bytes:
    return blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1:]


@pytest.mark.parametrize("backend", ["file", "pkcs11"])
def test_d17_wrong_key_aad_or_damage_is_refused(backend: str, hsm_kek: keks.Pkcs11Kek,
                                                hsm_kek_b: keks.Pkcs11Kek,
                                                tmp_path: Path) -> None:
    kek: keks.Kek
    if backend == "file":
        kek = keks.create_file_kek(tmp_path / "a.key")
        other: keks.Kek = keks.create_file_kek(tmp_path / "b.key")
    else:
        kek = hsm_kek
        other = hsm_kek_b
    wrapped = kek.wrap(DEK, AAD)
    cases = {
        "wrong aad": (kek, wrapped, AAD + b"x", "does not unwrap"),
        "empty aad": (kek, wrapped, b"", "does not unwrap"),
        "wrong key": (other, wrapped, AAD, "does not unwrap"),
        "nonce flipped": (kek, _flip(wrapped, 3), AAD, "does not unwrap"),
        "tag flipped": (kek, _flip(wrapped, len(wrapped) - 1), AAD, "does not unwrap"),
        "truncated": (kek, wrapped[:-1], AAD, "expected .* \\(damaged\\)"),
        "trailing byte": (kek, wrapped + b"\0", AAD, "expected .* \\(damaged\\)"),
        "empty": (kek, b"", AAD, "not a wrapped data key"),
        "unknown version": (kek, b"\x09" + wrapped[1:], AAD, "not a wrapped data key"),
    }
    for name, (who, blob, aad, match) in cases.items():
        with pytest.raises(KekError, match=match):     # noqa: PT012 - names the case
            who.unwrap(blob, aad)
            pytest.fail(f"{backend}: {name} was accepted")
    assert kek.unwrap(wrapped, AAD) == DEK          # the refusals changed nothing


def test_d17_blob_of_another_backend_is_refused(hsm_kek: keks.Pkcs11Kek,
                                                file_kek: keks.FileKek) -> None:
    with pytest.raises(KekError, match="another kind of KEK"):
        hsm_kek.unwrap(file_kek.wrap(DEK, AAD), AAD)
    with pytest.raises(KekError, match="another kind of KEK"):
        file_kek.unwrap(hsm_kek.wrap(DEK, AAD), AAD)


@pytest.mark.parametrize("dek", [b"", bytes(31), bytes(33)])
def test_d17_only_32_byte_data_keys_are_wrapped(dek: bytes, file_kek: keks.FileKek,
                                                hsm_kek: keks.Pkcs11Kek) -> None:
    for kek in (file_kek, hsm_kek):
        with pytest.raises(KekError, match="must be 32 bytes"):
            kek.wrap(dek, AAD)


def test_d17_hsm_key_is_not_extractable(hsm: dict[str, Path],
                                        hsm_kek: keks.Pkcs11Kek) -> None:
    lib = pkcs11.lib(SOFTHSM)
    # this process is logged in to the token already (hsm_kek's session): PKCS#11 login is
    # per application, so this session shares it
    with lib.get_token(token_label=TOKEN).open() as session:
        key = session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label="kek-a")
        assert key[pkcs11.Attribute.SENSITIVE] is True
        assert key[pkcs11.Attribute.EXTRACTABLE] is False
        assert key[pkcs11.Attribute.TOKEN] is True
        with pytest.raises(pkcs11.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]             # noqa: B018 - reading it is the attack
        wrapper = session.generate_key(pkcs11.KeyType.AES, 256, template={
            pkcs11.Attribute.TOKEN: False, pkcs11.Attribute.WRAP: True})
        with pytest.raises(pkcs11.PKCS11Error):    # not even wrapped out under another key
            wrapper.wrap_key(key, mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD)


# -- clear errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "match"), [
    ("", "expected file:/path, credential:NAME or pkcs11"),
    ("kek.key", "expected file:/path"),
    ("file:", "expected file:/path"),
    ("vault:secret/kek", "unknown kind 'vault'"),
    ("credential:../etc/shadow", "a credential name is letters"),
    ("pkcs11:token=x", "key: missing; pin-file: missing"),
    ("pkcs11:token=x;key=y;pin-file=/p;slot=3", "slot: unknown field"),
    ("pkcs11:token=x;token=y;key=k;pin-file=/p", "token: given twice"),
    ("pkcs11:token;key=k;pin-file=/p", "'token': expected name=value"),
])
def test_d17_bad_spec_is_a_clear_error(bad: str, match: str) -> None:
    with pytest.raises(KekError, match=match):
        keks.load_kek(bad)


def test_d17_missing_or_open_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KekError, match="no such key file"):
        keks.load_kek(f"file:{tmp_path / 'absent.key'}")
    keks.create_file_kek(tmp_path / "kek.key")
    (tmp_path / "kek.key").chmod(0o644)
    with pytest.raises(KekError, match="mode 0644 lets group/others"):
        keks.load_kek(f"file:{tmp_path / 'kek.key'}")
    (tmp_path / "other").write_bytes(b"x" * 32)
    (tmp_path / "other").chmod(0o600)
    with pytest.raises(KekError, match="not a timeclock KEK file"):
        keks.load_kek(f"file:{tmp_path / 'other'}")


def test_d17_create_never_overwrites(tmp_path: Path) -> None:
    made = keks.create_file_kek(tmp_path / "kek.key")
    before = (tmp_path / "kek.key").read_bytes()
    with pytest.raises(KekError, match="exists; refusing to overwrite a KEK"):
        keks.create_file_kek(tmp_path / "kek.key")
    assert (tmp_path / "kek.key").read_bytes() == before
    assert keks.load_kek(f"file:{tmp_path / 'kek.key'}").kek_id == made.kek_id


def test_d17_unset_credentials_directory_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KekError, match="CREDENTIALS_DIRECTORY is not set; run under systemd"):
        keks.load_kek("credential:timeclock-kek")


def test_d17_missing_credential_is_a_clear_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(KekError, match="timeclock-kek: no such key file"):
        keks.load_kek("credential:timeclock-kek")


def test_d17_pkcs11_errors_are_clear(hsm: dict[str, Path], hsm_kek: keks.Pkcs11Kek,
                                     tmp_path: Path) -> None:
    with pytest.raises(KekError, match=f"token '{TOKEN}': wrong PIN"):
        keks.load_kek(spec(hsm, "kek-a", pin="wrong_pin"))
    with pytest.raises(KekError, match="no token labelled 'no-such-token'"):
        keks.load_kek(spec(hsm, "kek-a", token="no-such-token"))   # noqa: S106 - a label
    with pytest.raises(KekError, match="no AES key labelled 'absent'"):
        keks.load_kek(spec(hsm, "absent"))
    with pytest.raises(KekError, match="already holds a key with this label"):
        keks.create_pkcs11_kek(spec(hsm, "kek-a"))
    with pytest.raises(KekError, match="pin-file: .*no such key file"):
        keks.load_kek(spec(hsm, "kek-a").replace(str(hsm["pin"]), str(tmp_path / "nope")))
    with pytest.raises(KekError, match="cannot load module /nonexistent.so"):
        keks.load_kek(f"pkcs11:module=/nonexistent.so;token={TOKEN};key=kek-a;"
                      f"pin-file={hsm['pin']}")
    assert hsm_kek.unwrap(hsm_kek.wrap(DEK, AAD), AAD) == DEK


# -- the command -------------------------------------------------------------------------------

def test_d17_kek_cli_create_and_check(tmp_path: Path, hsm: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "etc" / "kek.key"
    assert main(["kek", "create", "--file", str(path)]) == 0
    kek_id = capsys.readouterr().out.strip()
    assert kek_id == keks.load_kek(f"file:{path}").kek_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["kek", "create", "--file", str(path)]) == 2
    assert "refusing to overwrite a KEK" in capsys.readouterr().err
    assert main(["kek", "check", "--kek", f"file:{path}"]) == 0
    assert capsys.readouterr().out.strip() == kek_id
    hsm_spec = spec(hsm, "kek-cli").removeprefix("pkcs11:")
    assert main(["kek", "create", "--pkcs11", hsm_spec]) == 0
    assert capsys.readouterr().out.strip() == f"pkcs11:{TOKEN}/kek-cli"
    assert main(["kek", "check", "--kek", "pkcs11:" + hsm_spec]) == 0
    assert main(["kek", "check", "--kek", f"file:{tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "no such key file" in err
    assert "Traceback" not in err
    assert os.environ.get("SOFTHSM2_CONF", "").endswith("softhsm2.conf")


def _sealed_ledger(tmp_path: Path, kek_spec: str) -> str:
    """A ledger whose punch bodies are sealed under data keys wrapped by ``kek_spec``."""
    url = f"sqlite://{tmp_path / 'ledger.db'}"
    store = open_store(url, kek=kek_spec)
    try:
        clock = Clock("clock-00", site="hq")
        store.append([EventFact("device", clock.enrolled_body())], now_us=T0)
        store.append([clock.fact(credential=f"em4100:{n:010d}", action="in")
                      for n in range(3)], now_us=T0 + 1000)
    finally:
        store.close()
    return url


def _punch_bodies(url: str, kek_spec: str) -> list[bytes | None]:
    store = open_store(url, kek=kek_spec)
    try:
        return [se.body for se in store.entries() if se.entry.kind == "punch"]
    finally:
        store.close()


def test_d17_kek_rewrap_moves_a_ledgers_keys_to_the_hsm_and_records_it(
        tmp_path: Path, hsm: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old = keks.create_file_kek(tmp_path / "old.key")
    old_spec, new_spec = f"file:{tmp_path / 'old.key'}", spec(hsm, "kek-rewrap")
    keks.create_pkcs11_kek(new_spec)
    url = _sealed_ledger(tmp_path, old_spec)
    before = _punch_bodies(url, old_spec)
    assert len(before) == 3
    assert all(b is not None and b"em4100:" in b for b in before)
    raw = sqlite3.connect(tmp_path / "ledger.db")
    rows = raw.execute("SELECT key_id, kek_id FROM tc_data_keys").fetchall()
    stored = raw.execute("SELECT body FROM bodies").fetchall()
    raw.close()
    assert {k for _, k in rows} == {old.kek_id}
    assert main(["kek", "rewrap", "--store", url, "--kek", old_spec, "--to", new_spec]) == 0
    assert capsys.readouterr().out.strip() == str(len(rows))
    raw = sqlite3.connect(tmp_path / "ledger.db")
    assert {k for _, k in raw.execute("SELECT key_id, kek_id FROM tc_data_keys")} == \
        {f"pkcs11:{TOKEN}/kek-rewrap"}
    assert raw.execute("SELECT body FROM bodies").fetchall()[:len(stored)] == stored
    raw.close()                                       # (no body was rewritten)
    assert _punch_bodies(url, new_spec) == before
    with pytest.raises(KeyringError, match="not by the configured KEK"):
        _punch_bodies(url, old_spec)
    store = open_store(url, kek=new_spec)
    try:
        [entry] = [json.loads(se.body or b"{}") for se in store.entries()
                   if se.entry.kind == "access"]
    finally:
        store.close()
    assert (entry["type"], entry["from"], entry["to"], entry["keys"]) == \
        ("kek-rewrap", old.kek_id, f"pkcs11:{TOKEN}/kek-rewrap", len(rows))
    # the same KEK twice, a ledger without data keys: clear errors, nothing changes
    assert main(["kek", "rewrap", "--store", url, "--kek", new_spec, "--to", new_spec]) == 2
    assert "same KEK" in capsys.readouterr().err
    plain = f"sqlite://{tmp_path / 'plain.db'}"
    SQLiteStore(tmp_path / "plain.db").close()
    assert main(["kek", "rewrap", "--store", plain, "--kek", old_spec, "--to", new_spec]) == 2
    assert "holds no data keys" in capsys.readouterr().err
