"""The report page of a real tiny pipeline run (with its DVC sweep) opened in headless Chromium through
chromedriver: self-contained, every image decoded (naturalWidth > 0), no console errors; a full-page screenshot is
kept beside the test's temporary files and its path printed (and recorded as the test property ``screenshot``).

Chromium and chromedriver are the Debian packages ``make`` installs (``make browser``, a prerequisite of
``make test``)."""

from __future__ import annotations

import json
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DEFAULT_FIGURE_FILES = ["reconstructions.png", "traversal_y.png", "traversal_x_hat.png", "traversal_z.png"]


class References(HTMLParser):
    """Every URL the page refers to (src, href) and its <img> and <h2> elements."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.images: list[dict] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[name] for name in ("src", "href") if attrs.get(name)]
        if tag == "img":
            self.images.append(attrs)
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data.strip())
            self._in_h2 = False


def expected_figures(root: Path) -> int:
    """What the page must show: the evaluate stage's captions.json list (or the default four figures), both
    training curves, the sweep plot, and the comparison figure when the evaluate stage compared a variant."""
    captions = root / "figures" / "captions.json"
    listed = (
        json.loads(captions.read_text())
        if captions.exists()
        else [{"file": name} for name in DEFAULT_FIGURE_FILES if (root / "figures" / name).exists()]
    )
    assert listed, "the evaluate stage wrote no figures"
    scores = json.loads((root / "metrics" / "evaluate.json").read_text())
    compared = any(key.startswith("compare.") and not key.startswith("compare.stage_one.") for key in scores)
    return len(listed) + 2 + 1 + int(compared)


def chromium_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "chromium and chromedriver are missing: run `make browser` (Debian packages chromium, chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_report_in_headless_chromium(dvc_experiments, tmp_path, record_property):
    page = dvc_experiments.root / "report" / "index.html"
    parsed = References()
    parsed.feed(page.read_text())
    # self-contained: nothing but data: URIs, so the page opens anywhere, offline
    assert parsed.urls and all(url.startswith("data:") for url in parsed.urls), [
        url[:60] for url in parsed.urls if not url.startswith("data:")
    ]
    assert {"Scores", "Figures", "Sweep"} <= set(parsed.headings)
    expected = expected_figures(dvc_experiments.root)
    assert len(parsed.images) == expected

    driver = chromium_driver()
    try:
        driver.get(page.as_uri())
        driver.execute_script("return document.fonts.ready")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
            "width: i.naturalWidth, height: i.naturalHeight}))"
        )
        console = driver.get_log("browser")
        captions = driver.execute_script(
            "return Array.from(document.querySelectorAll('figcaption')).map(c => c.textContent)"
        )
        sweep_rows = driver.execute_script(
            "const h = Array.from(document.querySelectorAll('h2')).find(e => e.textContent === 'Sweep');"
            "return h.nextElementSibling.querySelectorAll('tr').length - 1"
        )
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(max(height, 1000), 16000))
        screenshot = tmp_path / "report.png"
        assert driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()

    assert len(images) == expected
    not_loaded = [image["alt"] for image in images if not (image["complete"] and image["width"] > 0)]
    assert not not_loaded, f"images that did not load: {not_loaded}"
    errors = [entry for entry in console if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert any("Stage-one training curves" in c for c in captions) and any("Sweep" in c for c in captions)
    assert sweep_rows == 3  # the HEAD commit and the two experiments
    width, shot_height = png_size(screenshot)
    assert width >= 1000 and shot_height >= 1000 and screenshot.stat().st_size > 50_000
    record_property("screenshot", str(screenshot))
    print(
        f"\nreport screenshot: {screenshot} ({width} x {shot_height} px, {len(images)} images, "
        f"{len(console)} console entries)"
    )


def test_the_widest_comparison_table_fits_a_1280_px_window(tmp_path):
    """Every comparison column for stage one and all nine stage-two rows: the page must not scroll sideways."""
    from stages import report

    variants = ["msvae", "msgan", "msflow", "betatcvae_l", "bigvae", "end_to_end", "c_input", "concat", "z_first"]
    scores = {
        f"compare.{name}.{key}": 1234567.0 if key.startswith("parameters") else 0.123456
        for name in ["stage_one", *variants]
        for _, key, _ in report.COMPARISON_COLUMNS
    }
    params = {"stage_two": {"variants": variants}, "stage_one": {"model": "betatcvae"}}
    page = tmp_path / "index.html"
    page.write_text(report.render(scores, params))
    driver = chromium_driver()
    try:
        driver.get(page.as_uri())
        page_width, window_width, rows = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth, "
            "document.querySelectorAll('.wide tr').length]"
        )
    finally:
        driver.quit()
    assert rows == 11
    assert page_width <= window_width == 1280
