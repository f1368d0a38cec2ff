"""A headless Chromium for the page tests and the demo benchmark: the system's browser, never a download.

Uses Selenium with the system's chromedriver (Debian: `apt-get install chromium chromium-driver`, which
scripts/setup.sh does when it runs as root with apt); `chromium_missing()` says why a machine cannot run it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _first(paths: tuple[str, ...], name: str) -> str | None:
    for p in paths:
        if Path(p).exists():
            return p
    return shutil.which(name)


def chromium_missing() -> str | None:
    """None when a headless Chromium can be driven here, else the reason (for pytest skips)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _first(CHROMIUM_CANDIDATES, "chromium") is None:
        return "no Chromium browser (Debian: apt-get install chromium chromium-driver; scripts/setup.sh does this)"
    if _first(CHROMEDRIVER_CANDIDATES, "chromedriver") is None:
        return "no chromedriver (Debian: apt-get install chromium-driver; scripts/setup.sh does this)"
    return None


def launch_chromium(width: int = 1000, height: int = 640):
    """A Selenium WebDriver on a fresh headless Chromium profile (removed on `driver.quit()` by the OS temp)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = chromium_missing()
    if reason:
        raise RuntimeError(reason)
    opts = webdriver.ChromeOptions()
    opts.binary_location = _first(CHROMIUM_CANDIDATES, "chromium")
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="ardrag-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=_first(CHROMEDRIVER_CANDIDATES, "chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.ardrag_profile = profile  # for cleanup by the caller
    return driver


def quit_chromium(driver) -> None:
    """Close the browser and remove its temporary profile."""
    profile = getattr(driver, "ardrag_profile", None)
    try:
        driver.quit()
    finally:
        if profile:
            shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------- driving the page (tests, scripts/bench_demo.py)
def wait_for(driver, script: str, timeout: float = 30.0):
    """Poll a JS expression until it is truthy and return its value; on timeout, fail with the page's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        time.sleep(0.02)
    log = driver.execute_script("return JSON.stringify([window.ardragDemo.log, window.ardragDemo.errors])")
    raise AssertionError(f"timed out waiting for {script}; page log: {log}")


def open_page(driver, url: str) -> None:
    """Load the demo page and wait until its first image is on the canvas."""
    driver.get(url)
    wait_for(driver, "window.ardragDemo && window.ardragDemo.image !== null")


def page_state(driver) -> dict:
    """What the page recorded: received frames, messages sent and logged, errors, stats (plain JSON)."""
    keys = ["received", "sent", "log", "errors", "stats"]
    js = f"return JSON.stringify(Object.fromEntries({keys}.map(k => [k, window.ardragDemo[k]])))"
    return json.loads(driver.execute_script(js))


def drag(driver, points: list[tuple[int, int]]) -> None:
    """Press, move through `points` (CSS pixels from the canvas' top-left), release: real pointer events."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "draw")
    w, h = canvas.size["width"], canvas.size["height"]
    offsets = [(x - w // 2, y - h // 2) for x, y in points]  # Selenium offsets are from the element's centre
    chain = (
        ActionChains(driver, duration=10).move_to_element_with_offset(canvas, *offsets[0]).click_and_hold()
    )
    for (x0, y0), (x1, y1) in zip(offsets, offsets[1:]):
        chain = chain.move_by_offset(x1 - x0, y1 - y0)
    chain.release().perform()
