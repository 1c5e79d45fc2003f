"""The web console in a real browser (issue 16 acceptance; CONTROLS D6, D7, D8, D12): people
sign in at the real OIDC provider and, in headless Chromium, resolve an exception with a
correction proposed by one HR officer and approved by another (the proposer's approval under
her second account refused), download a timesheet CSV and an evidence pack (which then
verifies offline with ``timeclock-verify --evidence``), dispute their own punch, see their
team, and each role opens only its pages (the others are a 403 page). Every step leaves a
screenshot in tests/artifacts/ (tests/fixtures/chromium_kit.py).

The parts: tests/collector/console_browser_kit.py (provider users and groups, the API as
``serve`` runs it, the download folder) over tests/collector/console_kit.py's site.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from collector.records.timesheets import CSV_FIELDS
from tests.collector import console_kit as K
from tests.collector.console_browser_kit import (
    Site,
    console_browser,
    console_site,
    downloaded,
    sign_in,
)
from tests.fixtures.chromium_kit import Browser, screenshot_on_failure
from tests.fixtures.oidc_kit import OIDCProvider
from tests.fixtures.pki import TestPKI
from tests.polling import wait_for
from wire.verify_cli import main as verify_main

pytestmark = [pytest.mark.subprocess]

# person -> the console pages their roles open (written out here, not read from the routes)
PAGES = ("/console/hr", "/console/hr/timesheets", "/console/team", "/console/me",
         "/console/compliance", "/console/ops")
OPENS: dict[str, set[str]] = {
    "hana": {"/console/hr", "/console/hr/timesheets"},
    "sue": {"/console/team"},
    "ann": {"/console/me"},
    "cora": {"/console/compliance"},
    "otto": {"/console/ops"},
}


@pytest.fixture(scope="module")
def site(oidc_provider: OIDCProvider, pki: TestPKI,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from console_site(oidc_provider, pki, tmp_path_factory.mktemp("console"))


@pytest.fixture(scope="module")
def chromium(site: Site, pki: TestPKI, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Browser, Path]]:
    yield from console_browser(pki, tmp_path_factory.mktemp("chromium"))


@pytest.fixture
def browser(request: pytest.FixtureRequest, chromium: tuple[Browser, Path]
            ) -> Iterator[Browser]:
    yield from screenshot_on_failure(request, chromium[0])


def _row(b: Browser, css: str) -> bool:
    return bool(b.driver.find_elements(By.CSS_SELECTOR, css))


WRONG = f'#exceptions tr[data-punch="{K.DAN_WRONG[0]}/{K.DAN_WRONG[1]}"]'
NEXT = f'#exceptions tr[data-punch="{K.DAN_WRONG[0]}/{K.DAN_WRONG[1] + 1}"]'


@pytest.fixture(scope="module")
def proposal(chromium: tuple[Browser, Path], site: Site) -> str:
    """Hana (hr.correct) proposes, on the HR page's exception row of DAN's wrong punch, to
    correct its action to an in; the proposal's id. The tests below decide it, in order."""
    browser = chromium[0]
    browser.test_name = "test_d6_proposal"
    sign_in(browser, site, "hana", "/console/hr")
    browser.wait_element(WRONG)
    assert _row(browser, NEXT)
    browser.step("hr-exceptions")
    form = f"{WRONG} form.propose"
    Select(browser.wait_element(f"{form} select[name=field]")).select_by_value("action")
    browser.fill(f"{form} input[name=after]", "in")
    Select(browser.wait_element(f"{form} select[name=reason]")).select_by_value("wrong-action")
    browser.fill(f"{form} input[name=note]", "Dan pressed out for in")
    browser.step("hr-propose")
    browser.click(f"{form} button")
    flash = browser.wait_element("#flash").text
    assert "proposed: another person approves it" in flash
    browser.step("hr-proposed")
    assert not _row(browser, "form.decide")       # hr.correct alone decides nothing
    return flash.split()[1]


def _approve(cid: str) -> str:
    return f'tr[data-proposal="{cid}"] form.decide[action$="/approve"]'


def test_d6_the_proposer_may_not_approve_under_another_account(browser: Browser, site: Site,
                                                               proposal: str) -> None:
    # the same person under her HR-lead account (employee E-HANA again): refused on the
    # page by the three-person rule, nothing applied
    sign_in(browser, site, "hana-lead", "/console/hr")
    browser.fill(f"{_approve(proposal)} input[name=note]", "mine")
    browser.click(f"{_approve(proposal)} button")
    refusal = browser.wait_element("#error").text
    assert "E-HANA proposed this correction and may not approve" in refusal
    browser.step("hr-own-approval-refused")
    assert site.entries("correction") == []
    assert _row(browser, WRONG)


def test_d6_another_person_approves_and_the_exception_is_resolved(browser: Browser,
                                                                  site: Site,
                                                                  proposal: str) -> None:
    sign_in(browser, site, "hugo", "/console/hr")
    browser.fill(f"{_approve(proposal)} input[name=note]", "checked the rota")
    browser.click(f"{_approve(proposal)} button")
    assert f"Correction {proposal} approved" in browser.wait_element("#flash").text
    browser.step("hr-approved")
    assert not _row(browser, WRONG)         # DAN's two missing-ins are one shift now
    assert not _row(browser, NEXT)
    assert _row(browser, '#exceptions tr[data-punch="clock-02/3"]')     # CAT's is still open
    [c] = site.entries("correction")
    assert (c["device"], c["seq"], c["field"], c["after"]) == (*K.DAN_WRONG, "action", "in")
    decided = [b for b in site.requests() if b["path"].startswith("/console/hr/corrections")]
    assert [(b["principal"], b["status"]) for b in decided] == [
        ("hana", 303), ("hana-lead", 403), ("hugo", 303)]


def test_a_timesheet_csv_downloaded_by_the_browser(browser: Browser, site: Site,
                                                   chromium: tuple[Browser, Path]) -> None:
    folder = chromium[1]
    sign_in(browser, site, "hana", "/console/hr/timesheets")
    browser.wait_element("#timesheet")
    browser.step("timesheets")
    browser.click("#csv")
    path = downloaded(folder, "timesheet.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert tuple(rows[0].keys()) == CSV_FIELDS
    assert sorted({r["employee_id"] for r in rows}) == ["ANN", "BOB", "CAT", "DAN", "SUE"]
    [bob] = [r for r in rows if r["employee_id"] == "BOB"]
    assert (bob["worked_hours"], bob["status"], bob["start_punch"], bob["end_punch"]) == (
        "1.00", "ok", "clock-02/1", "clock-02/2")
    path.unlink()
    assert any(b["path"] == "/v1/timesheets" and b["principal"] == "hana"
               and b["status"] == 200 for b in site.requests())


def test_d12_an_evidence_pack_downloaded_verifies_offline(browser: Browser, site: Site,
                                                          chromium: tuple[Browser, Path]
                                                          ) -> None:
    folder = chromium[1]
    sign_in(browser, site, "cora", "/console/compliance")
    browser.wait_element(f'#access-reviews tr[data-review="{site.access_review}"]')
    browser.wait_element(f'#evidence-packs tr[data-pack="{site.pack}"]')
    browser.step("compliance-panels")
    browser.click(f'#evidence-packs tr[data-pack="{site.pack}"] a.pack')
    path = downloaded(folder, site.pack)
    assert path.read_bytes() == (site.evidence / site.pack).read_bytes()
    assert verify_main(["--evidence", str(path), "--collector-key",
                        site.log_key.verify_key.b64]) == 0
    path.unlink()


def test_d6_an_employee_disputes_their_own_punch(browser: Browser, site: Site) -> None:
    sign_in(browser, site, "ann", "/console/me")
    row = 'tr[data-punch="clock-01/1"]'
    browser.wait_element(row)
    assert len(browser.driver.find_elements(By.CSS_SELECTOR, "#punches tbody tr")) == 1
    browser.step("me")
    Select(browser.wait_element(f"{row} select[name=field]")).select_by_value("action")
    browser.fill(f"{row} input[name=after]", "out")
    browser.fill(f"{row} input[name=note]", "I was leaving, not arriving")
    browser.click(f"{row} button")
    flash = browser.wait_element("#flash").text
    assert "raised: HR (hr.approve) decides it" in flash
    cid = flash.split()[1]
    browser.wait_element(f'#disputes tr[data-proposal="{cid}"]')
    browser.step("me-disputed")


def test_d8_a_supervisor_sees_the_team_only(browser: Browser, site: Site) -> None:
    sign_in(browser, site, "sue", "/console/team")
    browser.wait_element("#team-size")
    page = browser.text()
    assert browser.wait_element("#team-size").text == "3"
    assert "ANN" in page
    assert "CAT" not in page                 # not in Sue's team
    browser.step("team")


@pytest.mark.parametrize("person", sorted(OPENS))
def test_d8_each_role_opens_only_its_pages(browser: Browser, site: Site, person: str) -> None:
    sign_in(browser, site, person, "/console/")
    for page in PAGES:
        browser.get(f"{site.base}{page}")
        shown = wait_for(lambda: browser.driver.find_elements(
            By.CSS_SELECTOR, "#refused, #principal"), 60, f"{page} to answer")
        refused = browser.driver.find_elements(By.CSS_SELECTOR, "#refused")
        name = page.strip("/").replace("/", "-")
        if page in OPENS[person]:
            assert not refused, (person, page, browser.text())
            assert shown
            browser.step(f"{person}-{name}")
            continue
        assert refused, (person, page)
        assert refused[0].get_attribute("data-status") == "403"
        assert "Traceback" not in browser.text()
        if page == PAGES[-1] or page == "/console/hr":
            browser.step(f"{person}-{name}-refused")
    links = {str(a.get_attribute("href")).removeprefix(site.base)
             for a in browser.driver.find_elements(By.CSS_SELECTOR, "#console-nav a[data-page]")}
    assert links == OPENS[person]
