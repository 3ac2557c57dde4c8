"""The pages a DSL uses most, in headless Chromium against a real collector (issue 15): a
teacher logs a concern with the form, the DSL opens it, exports it as a PDF (the download is
read back), and downloads the term report PDF for the governors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from server_fixtures import PASSWORD, tree  # noqa: F401
from services import wait_until
from test_browser_e2e import _find, browser  # noqa: F401
from web_fixtures import collector  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _login(browser, base: str, username: str, target: str) -> None:
    browser.delete_all_cookies()
    browser.get(base + target)
    wait_until(lambda: "/login" in browser.current_url, timeout=10,
               message=lambda: f"no login page: {browser.current_url} {browser.find_element('tag name', 'body').text[:300]}")
    _find(browser, "username").send_keys(username)
    _find(browser, "password").send_keys(PASSWORD)
    _find(browser, "login-submit").click()
    wait_until(lambda: browser.current_url.split("?")[0].endswith(target.split("?")[0]), timeout=10,
               message=lambda: f"not on {target}: {browser.current_url}")


def _downloads(browser, folder: Path) -> None:
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})


def _downloaded_pdf(folder: Path) -> str:
    from pypdf import PdfReader

    path = wait_until(lambda: next((p for p in folder.glob("*.pdf")), None), timeout=20,
                      message=lambda: f"no PDF downloaded: {list(folder.iterdir())}")
    # Chromium writes a .crdownload first and renames it when done.
    wait_until(lambda: path.stat().st_size > 0, timeout=10)
    return " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(path.read_bytes())).pages).split())


def test_a_teacher_logs_a_concern_and_the_dsl_exports_it_and_the_term_report(collector, browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    base = collector.url
    # The teacher: the concern form, for their own room.
    _login(browser, base, "m.khan", "/concerns/new")
    Select(_find(browser, "concern-device")).select_by_value("5b-pi-01")
    _find(browser, "concern-what").send_keys("A pop-up with a scary game appeared on the Pi by the window")
    _find(browser, "concern-url").send_keys("https://scary-game.example.com/play")
    _find(browser, "concern-tell-it").click()
    _find(browser, "concern-submit").click()
    logged = _find(browser, "concern-logged")
    assert "with the DSL" in logged.text
    [row] = collector.store.list_it_queue("penny-acres")
    incident_id = row["incident_id"]
    assert row["domain"] == "scary-game.example.com"

    # The DSL: the record shows the concern; set the category; export it as a PDF.
    _login(browser, base, "s.patel", f"/incidents/{incident_id}")
    assert "scary game" in _find(browser, "concern-what").text
    assert _find(browser, "concern-url").text == "https://scary-game.example.com/play"
    Select(browser.find_element("name", "category")).select_by_value("filtering-breach")
    browser.find_element("css selector", "#incident-update button[type=submit]").click()
    wait_until(lambda: browser.find_element("id", "incident-category").text == "Filtering breach", timeout=10)
    pdfs = tmp_path / "downloads"
    pdfs.mkdir()
    _downloads(browser, pdfs)
    _find(browser, "export-submit").click()
    text = _downloaded_pdf(pdfs)
    for expected in ("Concern logged by staff", "scary game", "Filtering breach", "m.khan",
                     "Screen turned off / blanked"):
        assert expected in text, expected
    assert [x["format"] for x in collector.store.list_exports("penny-acres")] == ["pdf"]
    browser.get(f"{base}/incidents/{incident_id}")
    assert "s.patel: pdf" in _find(browser, "export-log").text

    # The term report, on the page and as the governors' PDF.
    for old in pdfs.iterdir():
        old.unlink()
    browser.get(f"{base}/reports/term")
    assert _find(browser, "term-incidents").text == "1"
    assert "Filtering breach" in _find(browser, "term-by-category").text
    _find(browser, "term-pdf").click()
    text = _downloaded_pdf(pdfs)
    assert "Filtering and monitoring" in text and "Filtering breach" in text and "no pupil is named" in text
    assert "m.khan" not in text and "scary game" not in text
