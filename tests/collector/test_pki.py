"""fleet.pki and `ca` / `broker-config` commands: CA layout, signing rules, revocation."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector import PKIError
from collector.cli.main import main
from collector.fleet.pki import CertificateAuthority, client_kind, parse_serial
from wire.tls import make_tls_key_and_csr

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def csr_for(cn: str) -> bytes:
    return make_tls_key_and_csr(cn)[1]


def _raw_csr(cn: str, key: object | None = None) -> bytes:
    """A CSR without the CN check of make_tls_key_and_csr (to feed the CA bad names)."""
    k = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
           .sign(k, hashes.SHA256()))  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", now=NOW)


def test_init_layout_and_modes(ca: CertificateAuthority) -> None:
    assert mode(ca.key_file) == 0o600
    assert ca.key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert json.loads(ca.index_file.read_text()) == {"v": 1, "crl_number": 1, "certs": []}
    crl = x509.load_pem_x509_crl(ca.crl_file.read_bytes())
    assert len(crl) == 0
    assert crl.is_signature_valid(ca.cert.public_key()) is True  # type: ignore[arg-type]


def test_init_refuses_existing_ca(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError, match=r"ca\.key: exists; refusing to overwrite"):
        CertificateAuthority.init(ca.directory, now=NOW)


def test_naive_now_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError, match="timezone-aware"):
        ca.sign_csr(csr_for("dev-a"), kind="device", now=dt.datetime(2025, 1, 1))  # noqa: DTZ001


@pytest.mark.parametrize(("cn", "kind", "error"), [
    ("Dev-A", "device", "is not a device id"),
    ("dev.a", "device", "is not a device id"),
    ("collector.main", "device", "is not a device id"),
    ("-dev", "device", "is not a device id"),
    ("a" * 64, "device", "is not a device id"),
    ("dev/+/#", "device", "is not a device id"),
    ("main", "collector", "must be collector.<name>"),
    ("dev-a", "collector", "must be collector.<name>"),
    ("collector.Main", "collector", "must be collector.<name>"),
    ("", "device", "exactly one common name"),
    ("dev-a", "server", "kind 'server' must be one of"),
    # an API integration's certificate can never be an MQTT identity, nor the reverse
    ("payroll", "api-client", "must be api.<name>"),
    ("collector.payroll", "api-client", "must be api.<name>"),
    ("api.Payroll", "api-client", "must be api.<name>"),
    ("api.payroll", "device", "is not a device id"),
    ("api.payroll", "collector", "must be collector.<name>"),
])
def test_sign_csr_validates_cn_per_kind(ca: CertificateAuthority, cn: str, kind: str,
                                        error: str) -> None:
    with pytest.raises(PKIError, match=error):
        ca.sign_csr(_raw_csr(cn), kind=kind, now=NOW)
    assert ca.entries() == []


def test_device_certificate_profile(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(csr_for("clock-17"), kind="device", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=clock-17"
    assert cert.issuer == ca.cert.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=397)
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    cert.verify_directly_issued_by(ca.cert)
    assert issued.entry.serial == f"{cert.serial_number:x}"
    assert (ca.directory / "issued" / f"{issued.entry.serial}.crt").read_bytes() == issued.cert_pem


def test_api_client_certificate_kind(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue_client("api.payroll", tmp_path / "p.key", tmp_path / "p.crt",
                             kind="api-client", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=api.payroll"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert [(e.cn, e.kind) for e in ca.entries()] == [("api.payroll", "api-client")]
    assert mode(tmp_path / "p.key") == 0o600
    # The CN alone says the kind: the three shapes are disjoint.
    assert [client_kind(cn) for cn in ("clock-17", "collector.main", "api.payroll",
                                       "api", "collector.a.b", "Api.x")] == [
        "device", "collector", "api-client", "device", None, None]


def test_collector_certificate_and_custom_validity(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(csr_for("collector.main"), kind="collector", now=NOW, days=30)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert issued.entry.kind == "collector"


@pytest.mark.parametrize("days", [0, -1, 3651])
def test_validity_out_of_range(ca: CertificateAuthority, days: int) -> None:
    with pytest.raises(PKIError, match="outside 1..3650"):
        ca.sign_csr(csr_for("dev-a"), kind="device", now=NOW, days=days)


def test_weak_rsa_key_refused(ca: CertificateAuthority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    with pytest.raises(PKIError, match="1024 bits is too small"):
        ca.sign_csr(_raw_csr("dev-a", weak), kind="device", now=NOW)


def test_garbage_csr_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError, match="not a PEM certificate signing request"):
        ca.sign_csr(b"hello", kind="device", now=NOW)


def test_server_certificate_sans_and_refuse_overwrite(ca: CertificateAuthority) -> None:
    files = ca.issue_server(dns=["localhost", "mqtt.example.org"], ips=["127.0.0.1", "::1"],
                            now=NOW)
    assert mode(files.key_file) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "mqtt.example.org"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(PKIError, match="broker.key: exists; refusing to overwrite"):
        ca.issue_server(dns=["localhost"], ips=[], now=NOW)


@pytest.mark.parametrize(("dns", "ips", "error"), [
    ([], [], "at least one"),
    (["bad name"], [], "is not a DNS name"),
    ([], ["300.1.1.1"], "is not an IP address"),
])
def test_server_certificate_bad_names(ca: CertificateAuthority, dns: list[str], ips: list[str],
                                      error: str) -> None:
    with pytest.raises(PKIError, match=error):
        ca.issue_server(dns=dns, ips=ips, now=NOW)


def test_issue_client_refuses_existing_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    (tmp_path / "d.key").write_bytes(b"old")
    with pytest.raises(PKIError, match="exists; refusing to overwrite"):
        ca.issue_client("dev-a", tmp_path / "d.key", tmp_path / "d.crt", kind="device", now=NOW)
    assert (tmp_path / "d.key").read_bytes() == b"old"


def test_ca_key_readable_by_others_refused(ca: CertificateAuthority) -> None:
    os.chmod(ca.key_file, 0o644)
    with pytest.raises(PKIError, match="chmod 600"):
        ca.sign_csr(csr_for("dev-a"), kind="device", now=NOW)


def test_passphrase_encrypted_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW, passphrase=b"correct horse")
    assert ca.key_file.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(PKIError, match="passphrase-encrypted; give --passphrase-file"):
        CertificateAuthority.open(ca.directory).sign_csr(csr_for("dev-a"), kind="device", now=NOW)
    with pytest.raises(PKIError, match="wrong passphrase"):
        CertificateAuthority.open(ca.directory, passphrase=b"wrong horse").sign_csr(
            csr_for("dev-a"), kind="device", now=NOW)
    ok = CertificateAuthority.open(ca.directory, passphrase=b"correct horse")
    assert ok.sign_csr(csr_for("dev-a"), kind="device", now=NOW).entry.cn == "dev-a"


def test_short_passphrase_refused(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="at least 8 bytes"):
        CertificateAuthority.init(tmp_path / "ca", now=NOW, passphrase=b"short")


def test_revoke_and_crl_contents(ca: CertificateAuthority) -> None:
    a1 = ca.sign_csr(csr_for("dev-a"), kind="device", now=NOW)
    a2 = ca.sign_csr(csr_for("dev-a"), kind="device", now=NOW)
    b = ca.sign_csr(csr_for("dev-b"), kind="device", now=NOW)
    later = NOW + dt.timedelta(hours=1)
    by_cn = ca.revoke(cn="dev-a", reason="key-compromise", now=later)
    assert sorted(e.serial for e in by_cn) == sorted([a1.entry.serial, a2.entry.serial])
    by_serial = ca.revoke(serial="0x" + b.entry.serial.upper(), reason="superseded", now=later)
    assert [e.cn for e in by_serial] == ["dev-b"]

    crl = x509.load_pem_x509_crl(ca.crl_file.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key()) is True  # type: ignore[arg-type]
    assert crl.next_update_utc == later + dt.timedelta(days=30)
    reasons = {f"{r.serial_number:x}": r.extensions.get_extension_for_class(x509.CRLReason)
               .value.reason for r in crl}
    assert reasons == {a1.entry.serial: x509.ReasonFlags.key_compromise,
                       a2.entry.serial: x509.ReasonFlags.key_compromise,
                       b.entry.serial: x509.ReasonFlags.superseded}
    assert crl.get_revoked_certificate_by_serial_number(
        parse_serial(b.entry.serial)).revocation_date_utc == later  # type: ignore[union-attr]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 3  # init, and one per revoke

    index = {e.serial: e for e in ca.entries()}
    assert index[b.entry.serial].reason == "superseded"
    assert index[b.entry.serial].status(later) == "revoked"


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"cn": "nobody", "reason": "superseded"}, "no certificate with CN 'nobody'"),
    ({"serial": "abc123", "reason": "superseded"}, "no certificate with serial abc123"),
    ({"serial": "xyz", "reason": "superseded"}, "not a hexadecimal number"),
    ({"cn": "dev-a", "reason": "because"}, "reason 'because' must be one of"),
    ({"reason": "superseded"}, "exactly one of --serial or --cn"),
])
def test_revoke_errors(ca: CertificateAuthority, kwargs: dict[str, str], error: str) -> None:
    ca.sign_csr(csr_for("dev-a"), kind="device", now=NOW)
    with pytest.raises(PKIError, match=error):
        ca.revoke(now=NOW, **kwargs)


def test_revoke_twice_refused(ca: CertificateAuthority) -> None:
    ca.sign_csr(csr_for("dev-a"), kind="device", now=NOW)
    ca.revoke(cn="dev-a", reason="superseded", now=NOW)
    with pytest.raises(PKIError, match="already revoked"):
        ca.revoke(cn="dev-a", reason="superseded", now=NOW)


def test_expired_status(ca: CertificateAuthority) -> None:
    e = ca.sign_csr(csr_for("dev-a"), kind="device", now=NOW, days=1).entry
    assert e.status(NOW) == "valid"
    assert e.status(NOW + dt.timedelta(days=2)) == "expired"


# -- CLI ---------------------------------------------------------------------------------

def test_cli_happy_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, pw = tmp_path / "ca", tmp_path / "pw"
    pw.write_bytes(b"a long passphrase\n")
    os.chmod(pw, 0o600)
    auth = ["--ca", str(ca_dir), "--passphrase-file", str(pw)]
    assert main(["ca", "init", str(ca_dir), "--passphrase-file", str(pw)]) == 0
    assert main(["ca", "issue-server", *auth, "--dns", "localhost", "--ip", "127.0.0.1"]) == 0
    _, csr = make_tls_key_and_csr("clock-17")
    (tmp_path / "c.csr").write_bytes(csr)
    assert main(["ca", "sign-csr", *auth, str(tmp_path / "c.csr"), "--kind", "device",
                 "--days", "10", "--out", str(tmp_path / "c.crt")]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "c.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=clock-17"
    assert main(["ca", "list", "--ca", str(ca_dir), "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("["):])
    assert [(r["cn"], r["kind"], r["status"]) for r in rows] == [
        ("localhost", "server", "valid"), ("clock-17", "device", "valid")]
    assert main(["ca", "revoke", *auth, "--cn", "clock-17", "--reason", "key-compromise"]) == 0
    assert main(["ca", "crl", *auth, "--out", str(tmp_path / "crl.pem"), "--days", "7"]) == 0
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert [r.serial_number for r in crl] == [cert.serial_number]
    assert main(["ca", "list", "--ca", str(ca_dir)]) == 0
    assert "revoked" in capsys.readouterr().out
    out_dir = tmp_path / "broker"
    assert main(["broker-config", "--ca", str(ca_dir), "--out", str(out_dir), "--port", "8883",
                 "--collector", "main", "--collector", "collector.standby"]) == 0
    assert {"acl", "ca.crt", "crl.pem", "data", "mosquitto.conf", "server.crt",
            "server.key"} <= {p.name for p in out_dir.iterdir()}
    # the managed layout: what `device revoke` needs (issue 15)
    assert f"pid_file {out_dir / 'mosquitto.pid'}" in (out_dir / "mosquitto.conf").read_text()
    assert mode(out_dir / "server.key") == 0o600
    assert "user collector.standby" in (out_dir / "acl").read_text()
    # Regenerating into the same directory is allowed (same key), a different key is not.
    assert main(["broker-config", "--ca", str(ca_dir), "--out", str(out_dir), "--port", "8884",
                 "--collector", "main"]) == 0


@pytest.mark.parametrize(("argv", "error"), [
    (["ca", "list", "--ca", "{tmp}/none"], "no CA here"),
    (["ca", "sign-csr", "--ca", "{ca}", "{tmp}/bad.csr", "--kind", "device", "--out",
      "{tmp}/x.crt"], "is not a device id"),
    (["ca", "sign-csr", "--ca", "{ca}", "{tmp}/good.csr", "--kind", "device", "--out",
      "{tmp}/exists.crt"], "exists; refusing to overwrite"),
    (["ca", "sign-csr", "--ca", "{ca}", "{tmp}/missing.csr", "--kind", "device", "--out",
      "{tmp}/x.crt"], "cannot read CSR"),
    (["ca", "init", "{tmp}/ca2", "--passphrase-file", "{tmp}/pw644"], "chmod 600"),
    (["ca", "revoke", "--ca", "{ca}", "--cn", "ghost", "--reason", "superseded"],
     "no certificate with CN 'ghost'"),
    (["broker-config", "--ca", "{ca}", "--out", "{tmp}/b", "--port", "8883", "--collector",
      "main"], "no server certificate"),
    (["broker-config", "--ca", "{ca}", "--out", "{tmp}/b", "--port", "8883", "--collector",
      "Bad Name"], "must match"),
])
def test_cli_errors_are_clear_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         argv: list[str], error: str) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.init(ca_dir, now=dt.datetime.now(dt.UTC))
    (tmp_path / "bad.csr").write_bytes(_raw_csr("Bad.Name"))
    (tmp_path / "good.csr").write_bytes(csr_for("dev-a"))
    (tmp_path / "exists.crt").write_bytes(b"keep me")
    (tmp_path / "pw644").write_bytes(b"long enough passphrase")
    os.chmod(tmp_path / "pw644", 0o644)
    if "Bad Name" in argv:
        CertificateAuthority.open(ca_dir).issue_server(dns=["localhost"], ips=[],
                                                       now=dt.datetime.now(dt.UTC))
    capsys.readouterr()
    rc = main([a.format(tmp=tmp_path, ca=ca_dir) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("timeclock-collector: error: ")
    assert error in err
    assert "Traceback" not in err
    assert (tmp_path / "exists.crt").read_bytes() == b"keep me"


def test_cli_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["ca", "--help"], ["broker-config", "--help"], ["ca", "sign-csr", "--help"]):
        with pytest.raises(SystemExit, match="0"):
            main(argv)
        assert "example" in capsys.readouterr().out
