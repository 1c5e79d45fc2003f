"""The ``[api]`` section of the collector config: :class:`ApiSection` and its parser.

Importing this imports no aiohttp (nor any other part of the API), so ``serve`` and
``--check-config`` of a collector without ``[api]`` never load the web stack; the
application itself (collector.api.app) is imported only when ``[api]`` is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector import ConfigError
from collector.access.gates import GateSettings
from collector.access.oidc import OidcAuth, OidcSection
from collector.records.reviews import ReviewSettings
from wire.config import Section
from wire.keys import VerifyKey

if TYPE_CHECKING:
    from collector.api.keys import ApiSettings
    from collector.ingest.statuses import StatusRow


@dataclass(frozen=True, slots=True)
class ApiSection:
    """``[api]``: where and how to serve; see docs/api.md."""

    cert: Path                      # server certificate (from our CA)
    key: Path                       # its key (0600)
    listen: str = "127.0.0.1"
    port: int = 8443
    client_ca: Path | None = None   # accept client certificates of this CA (CN = principal)
    crl: Path | None = None         # refuse revoked client certificates (needs client_ca)
    access_flush_ms: int = 100
    access_batch_max: int = 200
    auth_failures_max: int = 10
    auth_failures_window_s: int = 300
    pseudonym_key: Path | None = None   # badge pseudonyms in exports (export_fields; D20)
    gates: GateSettings = field(default_factory=GateSettings)  # from [breakglass], [policies]
    oidc: OidcSection | None = None     # from [oidc]: JWT access tokens (collector.access.oidc)
    reviews: ReviewSettings | None = None   # from [reviews]: the schedule /v1/reviews follows
    ca_dir: Path | None = None          # the console's certificate expiry (CA index.json)
    evidence_dir: Path | None = None    # the console's evidence packs (`evidence --out` here)

    def settings(self, log_keys: Mapping[str, VerifyKey],
                 statuses: Callable[[], Mapping[str, StatusRow]] | None = None
                 ) -> ApiSettings:
        from collector.api.keys import ApiSettings  # noqa: PLC0415 - keys imports aiohttp
        from collector.records.export_fields import Pseudonyms  # noqa: PLC0415 - as above

        pseudonyms = None if self.pseudonym_key is None else Pseudonyms.load(self.pseudonym_key)
        return ApiSettings(log_keys=dict(log_keys), pseudonyms=pseudonyms,
                           access_flush_ms=self.access_flush_ms,
                           access_batch_max=self.access_batch_max,
                           auth_failures_max=self.auth_failures_max,
                           auth_failures_window_s=self.auth_failures_window_s,
                           gates=self.gates,
                           reviews=self.reviews,
                           oidc=None if self.oidc is None else OidcAuth(self.oidc),
                           statuses=statuses, ca_dir=self.ca_dir,
                           evidence_dir=self.evidence_dir)


_LIMITS = {"port": (1, 65535), "access_flush_ms": (1, 10_000), "access_batch_max": (1, 10_000),
           "auth_failures_max": (1, 1000), "auth_failures_window_s": (1, 86_400)}


def parse_api_section(table: Mapping[str, Any], base_dir: Path, *, prefix: str = "api"
                      ) -> ApiSection:
    """An :class:`ApiSection` from a TOML table; every problem at once (ConfigError)."""
    problems: list[str] = []
    section = read_api_section(table, base_dir, problems, prefix=prefix)
    if section is None:
        raise ConfigError(problems)
    return section


def read_api_section(table: object, base_dir: Path, problems: list[str], *,
                     prefix: str = "api") -> ApiSection | None:
    """Read ``[api]`` with wire.config.Section, adding every problem (with its key path) to
    ``problems``; None when there is any. Relative paths are resolved against ``base_dir``
    (the config file's directory)."""
    sec = Section(prefix, table, problems)
    before = len(problems)
    d = ApiSection(cert=Path("-"), key=Path("-"))
    cert = sec.path("cert", base_dir, required=True)
    key = sec.path("key", base_dir, required=True)
    client_ca = sec.path("client_ca", base_dir)
    crl = sec.path("crl", base_dir)
    pseudonym_key = sec.path("pseudonym_key", base_dir)
    ca_dir = sec.path("ca_dir", base_dir)
    evidence_dir = sec.path("evidence_dir", base_dir)
    listen = sec.string("listen", d.listen, hint="a host name or address")
    numbers = {k: sec.integer(k, getattr(d, k), lo=lo, hi=hi) for k, (lo, hi) in _LIMITS.items()}
    if crl is not None and client_ca is None:
        sec.problem("crl", f"needs {sec.path_of('client_ca')} (nothing to check)")
    sec.finish(allowed={f.name for f in fields(ApiSection)} - {"gates", "oidc"})
    if len(problems) > before or cert is None or key is None:
        return None
    return ApiSection(cert=cert, key=key, listen=listen, client_ca=client_ca, crl=crl,
                      pseudonym_key=pseudonym_key, ca_dir=ca_dir, evidence_dir=evidence_dir,
                      **numbers)
