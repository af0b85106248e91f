"""The demo storefront in Debian's Chromium (headless, through Selenium and chromedriver),
against the real stack: ``recsvc serve``, ``ingest`` and ``gateway``, Kafka and Redis.

``make test`` installs the browser (scripts/browser.sh). The screenshots before and after
the click are kept in ``.local/test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_gateway import start_stack

ARTIFACTS = REPO / ".local" / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(program) is None:
            pytest.fail(f"no {program}: `make test` installs it (scripts/browser.sh)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def loaded(driver: WebDriver) -> str:
    """Wait for the page's script to finish (``body[data-ready]``); its outcome."""
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
        "data-ready"))  # fmt: skip
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") or ""


def row(driver: WebDriver) -> list[str]:
    return [a.get_attribute("data-item") or "" for a in driver.find_elements(
        By.CSS_SELECTOR, "#personal-cards a")]  # fmt: skip


def test_a_click_in_the_storefront_personalizes_the_next_row_and_says_why(
    tiny_bundle: Path, redis_url: str, topics, processes, browser: WebDriver, tmp_path: Path
) -> None:
    base, _ = start_stack(tiny_bundle, redis_url, topics, processes, tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    browser.get(f"{base}/demo")  # a new shopper lands on the most popular item, a
    assert loaded(browser) == "true"
    assert browser.find_element(By.ID, "current-id").text == "a"
    status = browser.find_element(By.ID, "personal-status").text
    assert status.startswith("Personalized by this item alone"), status
    before = row(browser)
    assert before == ["e", "c", "b", "d"]  # a's pool ranked by a alone (tests/helpers.py)
    browser.save_screenshot(str(ARTIFACTS / "storefront-before.png"))

    browser.find_element(By.CSS_SELECTOR, "#personal-cards a").click()  # e
    WebDriverWait(browser, 20).until(lambda d: "item=e" in d.current_url)
    assert loaded(browser) == "true"
    browser.save_screenshot(str(ARTIFACTS / "storefront-after.png"))
    assert browser.find_element(By.ID, "current-id").text == "e"
    status = browser.find_element(By.ID, "personal-status").text
    # The view of a went through the gateway, Kafka and ingest into the session.
    assert status.startswith("Personalized from your last 1 click"), status
    # e's pool (a, b, c, d) for the window (e, a): u = [.75, 0], scores a .75, b 0, c .75,
    # d -.75; the page asks to leave out what the shopper saw (a).
    assert row(browser) == ["c", "b", "d"]
    reasons = [w.text for w in browser.find_elements(By.CSS_SELECTOR, "#personal-cards .why")]
    assert "because you viewed a one click ago" in reasons, reasons
    clicks = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#clicks li")]
    assert clicks == ["e", "a"]  # newest first

    # The toggle shows the same row unpersonalized beside it.
    browser.find_element(By.ID, "compare").click()
    WebDriverWait(browser, 10).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#plain-cards a")
            and d.find_element(By.ID, "plain").is_displayed()
        )
    )
    plain = browser.find_element(By.ID, "plain-status").text
    assert plain == "Not personalized (no user)", plain
    in_pool_order = [a.get_attribute("data-item") for a in browser.find_elements(
        By.CSS_SELECTOR, "#plain-cards a")]  # fmt: skip
    assert in_pool_order == ["a", "b", "c", "d"]
