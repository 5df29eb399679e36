"""Headless Chromium for page tests: Debian's `chromium` driven through its own
`chromium-driver` by selenium; nothing downloads a browser. Screenshots go to the test
artifacts folder (`COMPUTESWARM_TEST_ARTIFACTS`, default `test-artifacts/` in the checkout).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ARTIFACTS = Path(
    os.environ.get(
        "COMPUTESWARM_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"
    )
)


def chromium():
    """A headless Chromium session (skips where the Debian packages are missing)."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromium-driver not installed (apt-get install; setup.sh does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (pip install -e .[test])")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def text_of(page) -> str:
    return page.execute_script("return document.body ? document.body.innerText : ''")


def until_text(page, found: Callable[[str], bool], what: str, timeout: float = 60) -> str:
    """The page's visible text once `found` says yes; fails with what it showed."""
    deadline = time.monotonic() + timeout
    while True:
        text = text_of(page)
        if found(text):
            return text
        if time.monotonic() > deadline:
            shoot(page, f"failed-{what.replace(' ', '-')}")
            raise AssertionError(
                f"{what}: not on the page in {timeout:.0f} s; it shows:\n{text[-2000:]}"
            )
        time.sleep(0.5)


def shoot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.save_screenshot(str(path))
    return path


def fetch_json(page, path: str):
    """`path` fetched by the page itself (its cookies, its origin)."""
    return page.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.json()).then(done, e => done({error: String(e)}));",
        path,
    )
