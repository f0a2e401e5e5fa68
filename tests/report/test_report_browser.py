"""report.html opened in a real headless Chromium (Debian's chromium + chromium-driver, via selenium).

Offline: the chromedriver path is given to Service, so selenium-manager never runs or downloads.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium pip package")
    from selenium.webdriver.chrome.service import Service

    if not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMIUM} is installed but {CHROMEDRIVER} is not: apt-get install chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def test_html_renders_in_chromium(built, driver, tmp_path):
    from selenium.webdriver.common.by import By

    run_dir, written = built
    driver.get((run_dir / "report.html").resolve().as_uri())
    assert driver.title.startswith("Andromeda benchmark report")
    assert driver.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
    assert driver.find_element(By.ID, "environment").is_displayed()
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) == len(written["png"])
    for img in images:
        ok = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", img)
        assert ok, img.get_attribute("alt")
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    shot = tmp_path / "report-screenshot.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if os.environ.get("ANDROMEDA_REPORT_SCREENSHOT"):  # keep a copy for people to look at
        shutil.copyfile(shot, os.environ["ANDROMEDA_REPORT_SCREENSHOT"])


QUICK_SMALL = ["timing.budget_s=0.05", "timing.min_runs=3", "timing.max_runs=5", "timing.warmup=1",
               "scenarios.0.mode=[forward, fwd_bwd]", "scenarios.0.batch=[1]", "scenarios.1.batch=[1, 4]",
               "scenarios.2.gen_len=[8]", "scenarios.3.seq_len=[64]", "scenarios.4.size=[32, 64]"]


@pytest.mark.slow
def test_quick_report_at_1280px(driver, tmp_path):
    """The quick preset's report (its sweeps cut for time) at 1280 px: no horizontal page overflow, every
    chart loads, the headline block and the link to the comparison exist; a screenshot is written."""
    from selenium.webdriver.common.by import By

    from andromeda.cli import main

    out = tmp_path / "quick"
    argv = ["run", "--preset", "quick", "--device", "cpu", "--out", str(out)]
    for s in QUICK_SMALL:
        argv += ["--set", s]
    assert main(argv) == 0
    driver.set_window_size(1280, 1000)
    driver.get((out / "report.html").resolve().as_uri())
    width = driver.execute_script("return window.innerWidth")
    assert 1200 <= width <= 1280
    scroll, client = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll <= client, f"the page scrolls sideways: {scroll} px of content in {client} px"
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) == len(list((out / "charts").glob("*.png"))) >= 6
    for img in images:
        ok = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", img)
        assert ok, img.get_attribute("alt")
    head = driver.find_element(By.ID, "headline")
    assert head.is_displayed() and head.location["y"] < 1000  # on the first screen
    assert head.find_elements(By.CSS_SELECTOR, "table.headline tbody tr")  # a row per model
    assert head.find_elements(By.CSS_SELECTOR, "table.verdicts tbody tr")  # the comparison's verdicts
    link = head.find_element(By.CSS_SELECTOR, "a.comparison-link")
    assert link.get_attribute("href").endswith("compare/compare.html") and (out / "compare" / "compare.html").is_file()
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    shot = tmp_path / "quick-report-1280.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if os.environ.get("ANDROMEDA_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["ANDROMEDA_REPORT_SCREENSHOT"].replace(".png", "-quick.png"))
