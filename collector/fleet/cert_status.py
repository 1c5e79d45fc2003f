"""Certificate expiry across a site (``timeclock-collector ca status``): the CA, the server
certificates (broker, API), the newest unrevoked certificate of every collector and device in
the CA's ``index.json``, and the CRLs (the CA's and the broker's copy, whose ``nextUpdate``
ends every TLS connection when it passes: OpenSSL then refuses every client).

Read-only: nothing here signs or writes. Levels, worst first: ``critical`` (expired, or not
readable), ``warning`` (inside ``warn_days``), ``ok``. Exit status of the command: the worst
level as 2 / 1 / 0 (Nagios plug-in convention). A certificate superseded by a newer one of
the same identity (a renewal) is not reported; a revoked one is not either. Every time comes
from ``now=``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from collector import PKIError
from collector.fleet.pki import CertificateAuthority, IndexEntry

LEVELS = ("ok", "warning", "critical")
EXIT = {"ok": 0, "warning": 1, "critical": 2}
DEFAULT_WARN_DAYS = 30
# A CRL is valid 30 days (pki.DEFAULT_CRL_DAYS) and the timer renews it daily: one with less
# than a week left means the renewal has not run for over three weeks.
DEFAULT_CRL_WARN_DAYS = 7


@dataclass(frozen=True, slots=True)
class CertStatus:
    """One certificate or CRL: what it is, until when it is valid, and the verdict."""

    kind: str            # ca, server, collector, device, crl
    name: str            # CN, server file name, or the CRL's file
    not_after: dt.datetime | None
    level: str
    detail: str
    serial: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "serial": self.serial,
                "not_after": None if self.not_after is None
                else self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "level": self.level, "detail": self.detail}


def _verdict(kind: str, name: str, not_after: dt.datetime, *, now: dt.datetime,
             warn_days: int, serial: str | None = None, what: str = "expires") -> CertStatus:
    left = not_after - now
    days = left.total_seconds() / 86400
    if left.total_seconds() <= 0:
        return CertStatus(kind, name, not_after, "critical",
                          f"{'expired' if what == 'expires' else 'past its next update'} "
                          f"{-days:.0f} day(s) ago", serial)
    level = "warning" if days < warn_days else "ok"
    return CertStatus(kind, name, not_after, level, f"{what} in {days:.0f} day(s)", serial)


def _unreadable(kind: str, name: str, why: str) -> CertStatus:
    return CertStatus(kind, name, None, "critical", why)


def cert_file_status(kind: str, name: str, path: Path, *, now: dt.datetime,
                     warn_days: int) -> CertStatus:
    """The expiry of the PEM certificate in ``path``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as e:
        return _unreadable(kind, name, f"{path}: {e.strerror}")
    except ValueError:
        return _unreadable(kind, name, f"{path}: not a PEM certificate")
    return _verdict(kind, name, cert.not_valid_after_utc, now=now, warn_days=warn_days,
                    serial=f"{cert.serial_number:x}")


def crl_file_status(name: str, path: Path, *, now: dt.datetime, warn_days: int) -> CertStatus:
    """The ``nextUpdate`` of the PEM CRL in ``path``."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except OSError as e:
        return _unreadable("crl", name, f"{path}: {e.strerror}")
    except ValueError:
        return _unreadable("crl", name, f"{path}: not a PEM CRL")
    nxt = crl.next_update_utc
    if nxt is None:
        return _unreadable("crl", name, f"{path}: the CRL has no next update")
    return _verdict("crl", name, nxt, now=now, warn_days=warn_days, what="next update")


def newest_unrevoked(entries: list[IndexEntry]) -> list[IndexEntry]:
    """Per (kind, CN), the unrevoked client certificate valid longest; server entries are
    left out (their files are read instead)."""
    best: dict[tuple[str, str], IndexEntry] = {}
    for e in entries:
        if e.kind == "server" or e.revoked_at is not None:
            continue
        key = (e.kind, e.cn)
        if key not in best or e.not_after > best[key].not_after:
            best[key] = e
    return sorted(best.values(), key=lambda e: (e.kind, e.cn))


def site_status(ca: CertificateAuthority, *, now: dt.datetime,
                warn_days: int = DEFAULT_WARN_DAYS, crl_warn_days: int = DEFAULT_CRL_WARN_DAYS,
                broker_dirs: tuple[Path, ...] = ()) -> list[CertStatus]:
    """Every certificate and CRL of the site (see the module doc), CA first."""
    for flag, value in (("--warn-days", warn_days), ("--crl-warn-days", crl_warn_days)):
        if value < 0:
            raise PKIError(f"{flag} {value}: must be ≥ 0")
    out = [_verdict("ca", ca.cert.subject.rfc4514_string(), ca.cert.not_valid_after_utc,
                    now=now, warn_days=warn_days, serial=f"{ca.cert.serial_number:x}")]
    server_dir = ca.directory / "server"
    if server_dir.is_dir():
        for crt in sorted(server_dir.glob("*.crt")):
            out.append(cert_file_status("server", crt.stem, crt, now=now, warn_days=warn_days))
    out += [_verdict(e.kind, e.cn, e.not_after, now=now, warn_days=warn_days, serial=e.serial)
            for e in newest_unrevoked(ca.entries())]
    out.append(crl_file_status(str(ca.crl_file), ca.crl_file, now=now,
                               warn_days=crl_warn_days))
    for d in broker_dirs:
        # The copies the broker actually loads (broker-config / init copy them).
        out.append(cert_file_status("server", f"{d}/server.crt", d / "server.crt", now=now,
                                    warn_days=warn_days))
        out.append(crl_file_status(f"{d}/crl.pem", d / "crl.pem", now=now,
                                   warn_days=crl_warn_days))
    return out


def worst(rows: list[CertStatus]) -> str:
    return max((r.level for r in rows), key=LEVELS.index, default="ok")
