"""Headless Chromium for tests that drive the report page (Debian `chromium` + `chromium-driver`).

Without them the browser tests skip; under CI (CI=true) they fail, like a missing data folder.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"      # screenshots (ignored by git)


def _find(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def chromium(download_dir: Path | None = None, width: int = 1400, height: int = 1000):
    """A Selenium driver for headless Chromium (skips or fails the test when it is missing)."""
    browser, driver = _find("chromium", "chromium-browser"), _find("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser = None
    if not browser or not driver:
        msg = "headless Chromium not found (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; under CI this is a failure, not a skip")
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if download_dir is not None:
        opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                               "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    if download_dir is not None:
        d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return d


def wait_for(fn, timeout: float = 30.0, what: str = "condition"):
    """Poll fn() until it returns something truthy; fail after `timeout` seconds. An element the
    page re-rendered between finding and reading it (stale) counts as not yet: poll again."""
    from selenium.common.exceptions import StaleElementReferenceException

    end = time.monotonic() + timeout
    while True:
        try:
            v = fn()
        except StaleElementReferenceException:
            v = None
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path
