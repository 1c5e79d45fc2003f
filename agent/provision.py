"""The clock's side of provisioning: install a bundle, rotate the signing key (control D1, D17).

``timeclock-agent provision BUNDLE --dir DIR`` installs what ``timeclock-collector device
enroll`` (collector/fleet/provisioning.py) produced for this clock: the device certificate, the
CA certificate and, for an enrolment, ``agent.toml`` naming the broker, the log public key and the
readers. ``timeclock-agent rotate-key --config F`` replaces the signing key with a new one made
here and writes a rotation request for the operator (``device rotate-key --request``).

Invariants:
- nothing private travels: the bundle (wire.provisioning) holds certificates and public keys
  only (a bundle with a PEM private key is refused), and the rotation request
  (wire.rotation) holds the new PUBLIC key, signed by the OLD private key so the collector
  knows it comes from the enrolled clock (the collector verifies it, with wire.rotation);
- a bundle is installed only if it matches the keys on this clock: the certificate's public
  key is the TLS key's, its CN is the device id, the CA signed it, and (for an enrolment) the
  registered signing key id is this clock's signing key;
- files are replaced atomically (rename), private keys stay 0600, existing config is only
  overwritten with ``--force``;
- a first enrolment (no ``agent.toml`` yet) seeds an empty state directory with a sequence
  mark at seq 0 (agent/seqmark.py; it needs the queue key file ``init`` wrote) and writes
  ``seeded_state = true``: from then on a state directory that holds neither queue nor mark is
  a lost state the agent refuses, not a first start;
- a rotation happens only while the agent is stopped, so every punch up to the printed
  ``from_seq - 1`` is signed by the old key and every later one by the new key; unacked
  punches keep their (old) signatures, which stay valid for their seqs.

This module does not import the collector (a clock installs only the agent).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.errors import AgentError
from wire.clock import now_us as clock_now_us
from wire.errors import WireError
from wire.keys import (
    SigningKey,
    load_signing_key,
    save_signing_key,
    write_public_file,
)
from wire.provisioning import ProvisioningBundle
from wire.rotation import RotationRequest, SignedRotationRequest

SIGNING_KEY_FILE = "signing.key"
TLS_KEY_FILE = "tls.key"
QUEUE_KEY_FILE = "queue.key"
CERT_FILE = "tls.crt"
CA_FILE = "ca.crt"
CONFIG_FILE = "agent.toml"
DEFAULT_STATE_DIR = Path("/var/lib/timeclock-agent")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class ProvisionError(AgentError):
    """A bundle or key rotation cannot be applied on this clock."""


@dataclass(frozen=True, slots=True)
class Installed:
    device: str
    purpose: str
    cert_file: Path
    ca_file: Path
    config_file: Path | None
    cert_not_after: str


# ---- TOML (the few value types a reader section has) -------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ProvisionError(f"bundle reader value of type {type(v).__name__} is not supported")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else json.dumps(k)


def render_agent_config(*, device: str, directory: Path, state_dir: Path, broker_host: str,
                        broker_port: int, log_public_key: str,
                        readers: Mapping[str, Mapping[str, Any]],
                        mqtt_options: Mapping[str, Any] | None = None,
                        credentials: bool = False, seal_public_key: str | None = None,
                        seeded_state: bool = False) -> str:
    """The ``agent.toml`` of a freshly provisioned clock (paths absolute)."""
    d = directory.absolute()

    def key(name: str, file: str) -> str:
        return f"credential:{name}" if credentials else str(d / file)

    lines = [
        "# Written by `timeclock-agent provision`; see `timeclock-agent check-config --help`.",
        "[device]", f"id = {_toml_value(device)}",
        f"state_dir = {_toml_value(str(state_dir.absolute()))}",
        *(["seeded_state = true"] if seeded_state else []), "",
        "[keys]",
        f"signing_key = {_toml_value(key('signing-key', SIGNING_KEY_FILE))}",
        f"queue_key = {_toml_value(key('queue-key', QUEUE_KEY_FILE))}",
        f"tls_key = {_toml_value(key('tls-key', TLS_KEY_FILE))}",
        f"tls_cert = {_toml_value(str(d / CERT_FILE))}",
        f"ca_cert = {_toml_value(str(d / CA_FILE))}",
        f"log_public_key = {_toml_value(log_public_key)}",
        *([f"seal_public_key = {_toml_value(seal_public_key)}"] if seal_public_key else []), "",
        "[mqtt]", f"host = {_toml_value(broker_host)}", f"port = {broker_port}",
    ]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in (mqtt_options or {}).items()]
    for name, section in readers.items():
        lines += ["", f"[readers.{_toml_key(name)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in section.items()]
    return "\n".join(lines) + "\n"


# ---- provision --------------------------------------------------------------------------------

def read_bundle(data: bytes) -> ProvisioningBundle:
    """Parse a bundle strictly (wire.provisioning, the definition the collector writes)."""
    try:
        return ProvisioningBundle.from_bytes(data)
    except WireError as e:
        raise ProvisionError(f"{e}; do not use this file") from e


def _check_cert(b: ProvisioningBundle, directory: Path) -> tuple[bytes, bytes]:
    """The certificate matches this clock's TLS key, its device id, and the bundled CA."""
    try:
        cert = x509.load_pem_x509_certificate(b.cert_pem.encode())
        ca = x509.load_pem_x509_certificate(b.ca_pem.encode())
    except ValueError as e:
        raise ProvisionError(f"provisioning bundle: bad certificate ({e})") from e
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cn) != 1 or cn[0].value != b.device:
        raise ProvisionError(f"the bundle's certificate is not for device {b.device}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise ProvisionError("the bundle's certificate was not issued by its CA") from e
    tls_key_file = directory / TLS_KEY_FILE
    try:
        key_pem = tls_key_file.read_bytes()
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ProvisionError(f"{tls_key_file}: cannot read this clock's TLS key (run "
                             f"`timeclock-agent init` first): {e}") from e
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ProvisionError(f"the bundle's certificate is for another TLS key than "
                             f"{tls_key_file} (was the CSR made on this clock?)")
    return (cert.public_bytes(serialization.Encoding.PEM),
            ca.public_bytes(serialization.Encoding.PEM))


def install_bundle(bundle: Path, directory: Path, *, state_dir: Path = DEFAULT_STATE_DIR,
                   credentials: bool = False, force: bool = False) -> Installed:
    """Install ``bundle`` into ``directory`` (which holds the keys from ``init``)."""
    try:
        b = read_bundle(bundle.read_bytes())
    except OSError as e:
        raise ProvisionError(f"{bundle}: cannot read: {e.strerror}") from e
    device = b.device
    cert_pem, ca_pem = _check_cert(b, directory)
    config_file: Path | None = None
    text = ""
    seed = False
    if b.purpose == "enrol":
        try:
            own = load_signing_key(directory / SIGNING_KEY_FILE)
        except WireError as e:
            raise ProvisionError(f"{directory / SIGNING_KEY_FILE}: {e}") from e
        if own.key_id != b.signing_key_id:
            raise ProvisionError(f"the bundle registers signing key {b.signing_key_id}, but "
                                 f"this clock's key is {own.key_id}")
        if b.broker_host is None or b.broker_port is None or b.log_public_key is None:
            raise ProvisionError("an enrolment bundle without broker or log key")  # parsed
        config_file = directory / CONFIG_FILE
        first = not config_file.exists()
        seed = first and _state_empty(state_dir) and (directory / QUEUE_KEY_FILE).exists()
        # A clock provisioned again keeps what its agent.toml says (the state is not re-seeded).
        kept = not first and "\nseeded_state = true\n" in config_file.read_text(
            encoding="utf-8", errors="replace")
        seeded = seed or kept or (first and not _state_empty(state_dir))
        text = render_agent_config(
            device=device, directory=directory, state_dir=state_dir,
            broker_host=b.broker_host, broker_port=b.broker_port,
            log_public_key=b.log_public_key, readers=b.readers,
            mqtt_options=b.mqtt_options, credentials=credentials,
            seal_public_key=b.seal_public_key, seeded_state=seeded)
        if config_file.exists() and config_file.read_text(encoding="utf-8") != text \
                and not force:
            raise ProvisionError(f"{config_file}: exists with other content; use --force to "
                                 f"replace it (or edit it by hand)")
    if seed:
        _seed_state(directory, state_dir, device)
    try:
        write_public_file(directory / CA_FILE, ca_pem)
        write_public_file(directory / CERT_FILE, cert_pem)
        if config_file is not None:
            write_public_file(config_file, text.encode())
    except OSError as e:
        raise ProvisionError(f"cannot write into {directory}: {e.strerror}") from e
    return Installed(device, b.purpose, directory / CERT_FILE, directory / CA_FILE,
                     config_file, b.cert_not_after)


def _state_empty(state_dir: Path) -> bool:
    """Neither queue nor sequence mark (a state directory that holds one is left alone: its
    own records decide)."""
    return not (state_dir / "queue.db").exists() and not (state_dir / "seqmark").exists()


def _seed_state(directory: Path, state_dir: Path, device: str) -> None:
    """The first start's evidence: a sequence mark at seq 0 in an empty state directory."""
    from agent.keystore import load_queue_key  # noqa: PLC0415 -- provisioning only
    from agent.seqmark import MARK_FILE, SeqMark  # noqa: PLC0415 -- pulls in the queue

    try:
        key = load_queue_key(directory / QUEUE_KEY_FILE)
    except (OSError, WireError, AgentError) as e:
        raise ProvisionError(f"{directory / QUEUE_KEY_FILE}: cannot seed the sequence mark: "
                             f"{e}") from e
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        SeqMark(state_dir / MARK_FILE, key, device).create()
    except (OSError, AgentError) as e:
        raise ProvisionError(f"{state_dir}: cannot seed the sequence mark: {e}") from e


# ---- rotate-key -------------------------------------------------------------------------------

def rotation_request(device: str, old: SigningKey, new: SigningKey, from_seq: int,
                     *, at_us: int) -> SignedRotationRequest:
    """The request ``device rotate-key --request`` takes (wire.rotation): the new public key
    and first seq, signed by the old key."""
    return RotationRequest(device=device, old_key=old.key_id, key=new.key_id,
                           signing_key=new.verify_key, from_seq=from_seq,
                           at=at_us).sign(old)


def rotate_signing_key(config_path: Path, *, request_out: Path | None = None,
                       now_us: int | None = None) -> tuple[Path, SignedRotationRequest]:
    """Replace the signing key named by the config; return (request file, request)."""
    from agent.config import load_config  # noqa: PLC0415 -- config pulls in reader plugins
    from agent.queue import read_stats  # noqa: PLC0415
    from agent.status import read_status  # noqa: PLC0415

    now_us = clock_now_us() if now_us is None else now_us
    config = load_config(config_path, check_readers=False)
    ref = config.keys.signing_key
    if ref.path is None:
        raise ProvisionError("keys.signing_key is a systemd credential: rotate with a key file "
                             "(see docs/operations.md, 'Rotating a signing key')")
    sf = read_status(config.status.path, now_us=now_us,
                     stale_after_s=max(3 * config.status.interval_s, 15.0))
    if sf is not None and sf.live:
        raise ProvisionError(f"the agent is running (pid {sf.snapshot.get('pid')}): stop it "
                             f"first (systemctl stop timeclock-agent), so that every punch "
                             f"is signed by exactly one key")
    last_seq = read_stats(config.queue_path).last_seq if config.queue_path.exists() else 0
    try:
        old = load_signing_key(ref.path)
    except WireError as e:
        raise ProvisionError(str(e)) from e
    new = SigningKey.generate()
    request = rotation_request(config.device.id, old, new, last_seq + 1, at_us=now_us)
    out = request_out or config_path.parent / f"rotate-{config.device.id}-{new.key_id}.json"
    try:
        with open(out, "xb") as f:
            f.write(request.to_bytes())
    except OSError as e:
        raise ProvisionError(f"{out}: cannot write the rotation request: {e.strerror}") from e
    tmp = ref.path.with_name(f".{ref.path.name}.new")
    tmp.unlink(missing_ok=True)
    save_signing_key(tmp, new)
    os.replace(tmp, ref.path)   # the old key is gone: it signs nothing any more
    return out, request


# ---- command line -----------------------------------------------------------------------------

PROVISION_EPILOG = """\
example (on the clock, after `timeclock-agent init --device clock-0017 --dir /etc/timeclock`
and the operator's `timeclock-collector device enroll ... --out clock-0017.bundle`):
  timeclock-agent provision clock-0017.bundle --dir /etc/timeclock
  timeclock-agent check-config /etc/timeclock/agent.toml
  systemctl enable --now timeclock-agent

A renewal bundle (`device renew`) replaces only the certificate: restart the agent after it.
"""

ROTATE_EPILOG = """\
example:
  systemctl stop timeclock-agent
  timeclock-agent rotate-key --config /etc/timeclock/agent.toml
  # give the printed request file to the operator:
  #   timeclock-collector device rotate-key --store ... --request rotate-clock-0017-<id>.json
  systemctl start timeclock-agent

Punches recorded before the rotation keep their old signatures and stay valid; punches
from `from_seq` on are signed with the new key. If the agent publishes before the operator
registered the new key, those punches are quarantined and NOT acknowledged: the clock keeps
them and resends; they are recorded once the key is registered.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``provision`` and ``rotate-key`` to ``timeclock-agent``'s subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("provision", help="install a provisioning bundle from the operator",
                       description="Install the device certificate, CA certificate and agent "
                                   "config from a bundle made by `timeclock-collector device "
                                   "enroll` (or only the certificate, from `device renew`).",
                       epilog=PROVISION_EPILOG, formatter_class=fmt)
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle file (JSON)")
    p.add_argument("--dir", required=True, type=Path,
                   help="the directory of `timeclock-agent init` (holds the keys)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="queue and status directory written to agent.toml (%(default)s)")
    p.add_argument("--credentials", action="store_true",
                   help="name the keys as systemd credentials (credential:signing-key, ...) "
                        "in agent.toml, for LoadCredentialEncrypted=")
    p.add_argument("--force", action="store_true", help="replace an existing, different "
                                                        "agent.toml")
    p.set_defaults(func=cmd_provision)

    r = sub.add_parser("rotate-key", help="replace the signing key (agent stopped)",
                       description="Make a new Ed25519 signing key on this clock, replace the "
                                   "old one, and write a rotation request (new public key, "
                                   "first seq, signed by the old key) for the operator.",
                       epilog=ROTATE_EPILOG, formatter_class=fmt)
    r.add_argument("--config", "-c", required=True, type=Path, help="agent TOML file")
    r.add_argument("--request", type=Path, metavar="FILE",
                   help="where to write the request (default: next to the config)")
    r.set_defaults(func=cmd_rotate_key)


def cmd_provision(args: argparse.Namespace) -> int:
    r = install_bundle(args.bundle, args.dir, state_dir=args.state_dir,
                       credentials=args.credentials, force=args.force)
    print(f"provisioned {r.device} ({r.purpose}): certificate {r.cert_file} valid until "
          f"{r.cert_not_after}, CA {r.ca_file}")
    if r.config_file is not None:
        print(f"config: {r.config_file}")
        print(f"next: timeclock-agent check-config {r.config_file} && "
              f"systemctl enable --now timeclock-agent")
    else:
        print("next: systemctl restart timeclock-agent (it reconnects with the new "
              "certificate; queued punches are kept)")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    out, signed = rotate_signing_key(args.config, request_out=args.request)
    req = signed.request
    print(f"new signing key {req.key} for {req.device} from seq {req.from_seq} "
          f"(old key {req.old_key} destroyed)")
    print(f"signing public key: {req.signing_key.b64}")
    print(f"rotation request:   {out}")
    print(f"register it: timeclock-collector device rotate-key --store URL --request {out.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.provision provision|rotate-key ...`` (also wired into timeclock-agent)."""
    parser = argparse.ArgumentParser(prog="timeclock-agent")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except (AgentError, WireError) as e:
        print(f"timeclock-agent: error: {e}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
