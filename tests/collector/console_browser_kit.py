"""The console as people use it, for tests/collector/test_console_browser.py: the real OIDC
provider (tests/fixtures/oidc_kit.py), the collector's API over HTTPS as ``serve`` runs it
(ApiThread with the sign-in, the service's device statuses, a CA index and an evidence
folder), a SQLite ledger seeded with tests/collector/console_kit.py's site, and Debian's
headless Chromium (tests/fixtures/chromium_kit.py) with a download folder.

People at the provider and their groups, mapped to roles by ``[oidc] roles`` as an operator
writes them: hana (hr-clerks: hr.read, hr.correct), hugo and hana-lead (hr-leads: hr.read,
hr.approve; hana-lead is hana's second account, the same employee E-HANA), all with MFA and
a one-time code since hr.correct and hr.approve are privileged (nobody may hold both:
segregation of duties refuses such a group), sue (supervisors: supervisor; employee
SUE), ann (staff: employee.self; employee ANN), cora (compliance: audit.read,
audit.review), otto (ops: ops.devices).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.access.oidc import OidcAuth, OidcSection, read_oidc_section
from collector.api.app import ApiThread
from collector.api.config import ApiSection
from collector.api.signin import SignIn, SigninConfig
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from tests.collector import console_kit as K
from tests.collector.api_kit import access_bodies
from tests.fixtures.chromium_kit import Browser, chromium_browser
from tests.fixtures.mosquitto import free_port
from tests.fixtures.oidc_kit import MFA_ACR, WEB_CLIENT, OIDCProvider
from tests.fixtures.pki import TestPKI
from tests.polling import wait_for
from wire.clock import now_us
from wire.keys import SigningKey

DOWNLOAD_WAIT_S = 60.0
GROUPS = {"hr-clerks": ["hr.read", "hr.correct"], "hr-leads": ["hr.read", "hr.approve"],
          "supervisors": ["supervisor"],
          "staff": ["employee.self"], "compliance": ["audit.read", "audit.review"],
          "ops": ["ops.devices"]}
USERS: dict[str, dict[str, Any]] = {
    "hana": {"sub": "u-5001", "password": "hana-pw", "groups": ["hr-clerks"],
             "employee_id": "E-HANA", "mfa": True, "otp": "246801"},
    # the same person's second account, as an HR lead (E-HANA again)
    "hana-lead": {"sub": "u-5007", "password": "hana-lead-pw", "groups": ["hr-leads"],
                  "employee_id": "E-HANA", "mfa": True, "otp": "246802"},
    "hugo": {"sub": "u-5002", "password": "hugo-pw", "groups": ["hr-leads"],
             "employee_id": "E-HUGO", "mfa": True, "otp": "135792"},
    "sue": {"sub": "u-5003", "password": "sue-pw", "groups": ["supervisors"],
            "employee_id": "SUE", "mfa": False},
    "ann": {"sub": "u-5004", "password": "ann-pw", "groups": ["staff"], "employee_id": "ANN",
            "mfa": False},
    "cora": {"sub": "u-5005", "password": "cora-pw", "groups": ["compliance"],
             "employee_id": "E-CORA", "mfa": False},
    "otto": {"sub": "u-5006", "password": "otto-pw", "groups": ["ops"], "employee_id": "E-OTTO",
             "mfa": False},
}


@dataclass
class Site:
    base: str
    ledger: Path
    evidence: Path
    pack: str
    log_key: SigningKey
    access_review: str

    def entries(self, kind: str) -> list[dict[str, Any]]:
        import json  # noqa: PLC0415 - only here

        reader = SQLiteStore(self.ledger)
        try:
            return [json.loads(se.body) for se in reader.entries()
                    if se.entry.kind == kind and se.body is not None]
        finally:
            reader.close()

    def requests(self) -> list[dict[str, Any]]:
        reader = SQLiteStore(self.ledger)
        try:
            return [b for b in access_bodies(reader) if b.get("type") == "request"]
        finally:
            reader.close()


def oidc_section(provider: OIDCProvider, base: str, secret_file: Path) -> OidcSection:
    problems: list[str] = []
    section = read_oidc_section({
        "issuer": provider.issuer, "audience": provider.audience,
        "employee_claim": "employee_id", "mfa_acr": [MFA_ACR], "roles": GROUPS,
        "client_id": WEB_CLIENT, "client_secret_file": str(secret_file),
        "redirect_uri": f"{base}/auth/callback"}, problems)
    assert section is not None, problems
    return section


def console_site(provider: OIDCProvider, pki: TestPKI, root: Path) -> Iterator[Site]:
    """Body of a module fixture: the site above, served until the module ends."""
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    secret_file = provider.web_site(base, USERS, root)
    section = oidc_section(provider, base, secret_file)
    config = SigninConfig.load(section)
    assert config is not None
    evidence, pack, key = K.make_pack(root / "pack")
    now = now_us()
    ledger = root / "ledger.db"
    store = SQLiteStore(ledger)
    K.seed_site(store, root, now)
    ensure_schema(store)
    review = K.start_access_review(store, "reviewer", now)
    ca = K.ca_with_device_cert(root, now)
    api = ApiThread(ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                               listen="127.0.0.1", port=port, oidc=section, ca_dir=ca,
                               evidence_dir=evidence), store, log_keys={},
                    signin=SignIn(config, OidcAuth(section)),
                    statuses=K.status_table(now).snapshot)
    api.start()
    try:
        yield Site(base, ledger, evidence, pack, key, review)
    finally:
        api.stop()
        store.close()


def console_browser(pki: TestPKI, root: Path) -> Iterator[tuple[Browser, Path]]:
    """Body of a module fixture: one Chromium whose downloads land in ``root/downloads``."""
    downloads = root / "downloads"
    downloads.mkdir()
    for b in chromium_browser([pki.server_cert_file], root):
        b.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
            "behavior": "allow", "downloadPath": str(downloads)})
        yield b, downloads


def sign_in(b: Browser, site: Site, name: str, next_path: str) -> None:
    """Through the provider's own login page (and its one-time code page for an MFA user),
    back to ``next_path``; cookies of an earlier person are cleared first."""
    b.clear_cookies()
    u = USERS[name]
    b.get(f"{site.base}/auth/login?next={urllib.parse.quote(next_path)}")
    b.fill("#username", name)
    b.fill("#password", u["password"])
    b.click("#submit")
    if u["mfa"]:
        b.wait_text("enter the one-time code")
        b.fill("#password", u["password"])
        b.fill("#otp", u["otp"])
        b.click("#submit")
    b.wait_element("#principal")


def downloaded(folder: Path, name: str) -> Path:
    """Wait (bounded) for Chromium to finish writing ``folder/name``."""
    path = folder / name

    def done() -> Path | None:
        partial = list(folder.glob("*.crdownload"))
        return path if path.is_file() and not partial and path.stat().st_size > 0 else None

    got = wait_for(done, DOWNLOAD_WAIT_S, f"the download {name} in {folder}")
    assert got is not None      # wait_for returns only a truthy value
    return got
