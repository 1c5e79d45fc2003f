"""The ``[api]`` section of the collector config: :class:`ApiSection` and its parser.

Importing this imports no aiohttp (nor any other part of the API), so ``serve`` and
``--check-config`` of a collector without ``[api]`` never load the web stack; the
application itself (collector.api.app) is imported only when ``[api]`` is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector import ConfigError

if TYPE_CHECKING:
    from collector.api.keys import ApiSettings
    from wire.keys import VerifyKey


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

    def settings(self, log_keys: Mapping[str, VerifyKey]) -> ApiSettings:
        from collector.api.keys import ApiSettings  # noqa: PLC0415 - keys imports aiohttp

        return ApiSettings(log_keys=dict(log_keys), access_flush_ms=self.access_flush_ms,
                           access_batch_max=self.access_batch_max,
                           auth_failures_max=self.auth_failures_max,
                           auth_failures_window_s=self.auth_failures_window_s)


_LIMITS = {"port": (1, 65535), "access_flush_ms": (1, 10_000), "access_batch_max": (1, 10_000),
           "auth_failures_max": (1, 1000), "auth_failures_window_s": (1, 86_400)}


def _paths(table: Mapping[str, Any], base_dir: Path, prefix: str, values: dict[str, Any],
           problems: list[str]) -> None:
    for k in ("cert", "key"):
        if k not in table:
            problems.append(f"{prefix}.{k}: required")
    for k in ("cert", "key", "client_ca", "crl"):
        if k not in table:
            continue
        v = table[k]
        if not isinstance(v, str) or not v:
            problems.append(f"{prefix}.{k}: must be a file path")
        else:
            p = Path(v)
            values[k] = p if p.is_absolute() else base_dir / p


def _numbers(table: Mapping[str, Any], prefix: str, values: dict[str, Any],
             problems: list[str]) -> None:
    for k, (lo, hi) in _LIMITS.items():
        if k not in table:
            continue
        v = table[k]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            problems.append(f"{prefix}.{k}: must be an integer in {lo}…{hi}")
        else:
            values[k] = v


def parse_api_section(table: Mapping[str, Any], base_dir: Path, *, prefix: str = "api"
                      ) -> ApiSection:
    """An :class:`ApiSection` from a TOML table; every problem at once (ConfigError).
    Relative paths are resolved against ``base_dir`` (the config file's directory)."""
    known = {f.name for f in fields(ApiSection)}
    problems = [f"{prefix}.{k}: unknown key (known: {', '.join(sorted(known))})"
                for k in table if k not in known]
    values: dict[str, Any] = {}
    _paths(table, base_dir, prefix, values, problems)
    _numbers(table, prefix, values, problems)
    if "listen" in table:
        if not isinstance(table["listen"], str) or not table["listen"]:
            problems.append(f"{prefix}.listen: must be a host or address")
        else:
            values["listen"] = table["listen"]
    if "crl" in values and "client_ca" not in values:
        problems.append(f"{prefix}.crl: needs {prefix}.client_ca (nothing to check)")
    if problems:
        raise ConfigError(problems)
    return ApiSection(**values)
