"""End to end in a real browser: Debian's chromium, headless, driven by Playwright.

Opens the page, uploads a real X-ray, waits for the class probabilities and the
Grad-CAM overlay, checks a bad file gives one message, and saves screenshots under
the test's tmp dir. With ``SSLMED_UPDATE_SCREENSHOTS=1`` the page screenshot is also
copied to ``docs/images/demo.png``; ``SSLMED_SCREENSHOT_MODEL`` may name a run folder
to show instead of the small test model (e.g. a finished quickstart run).

Skips with a message when chromium or Playwright is missing
(``apt-get install -y chromium``; ``.ci/run`` does this).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from webapp_support import free_port, shared_model_export

from sslmed.predict import Predictor
from sslmed.webapp import build_demo, launch_options

CHROMIUM = os.environ.get("SSLMED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 90_000

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(), reason=f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    ),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed (pip install -e '.[dev]')"
)


@pytest.fixture(scope="module")
def predictor(data_dir: Path) -> Predictor:
    chosen = os.environ.get("SSLMED_SCREENSHOT_MODEL")
    model = Path(chosen) if chosen else shared_model_export(data_dir, decoder=True)
    return Predictor(model, device="cpu")


@pytest.fixture(scope="module")
def page_url(predictor: Predictor, data_dir: Path) -> Iterator[str]:
    samples = data_dir / "samples"
    demo = build_demo(predictor, examples_dir=samples)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(samples)
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_shows_label_and_overlay(
    browser: object, page_url: str, predictor: Predictor, data_dir: Path, tmp_path: Path
) -> None:
    image = data_dir / "samples" / "darkcovidnet_00000211_013.png"
    expected = predictor.predict([image])[0]
    top = max(expected, key=expected.get)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.get_by_role("button", name="Classify").wait_for()
        page.locator("#upload input[type=file]").set_input_files(str(image))
        probabilities = page.locator("#probabilities")
        sync_api.expect(probabilities).to_contain_text(top, timeout=TIMEOUT_MS)
        overlay = page.locator("#gradcam img")
        sync_api.expect(overlay).to_be_visible(timeout=TIMEOUT_MS)
        assert page.locator("#model-view img").is_visible()
        if predictor.extras.get("decoder") is not None:
            sync_api.expect(page.locator("#reconstruction img")).to_be_visible(timeout=TIMEOUT_MS)
        card = page.locator("#model-card")
        sync_api.expect(card).to_contain_text("not a diagnostic device")
        sync_api.expect(card).to_contain_text("balanced accuracy")
        natural_width = overlay.evaluate("img => img.naturalWidth")
        assert natural_width > 0, "the overlay image loaded"
        page.wait_for_timeout(500)  # let the label bars finish their transition
        screenshot = tmp_path / "demo.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 10_000
        if os.environ.get("SSLMED_UPDATE_SCREENSHOTS") == "1":
            target = REPO / "docs" / "images" / "demo.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, target)
    finally:
        page.close()


def test_bad_file_shows_one_message(browser: object, page_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "report.png"
    bad.write_text("this is a text file with a .png name\n")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.get_by_role("button", name="Classify").wait_for()
        page.locator("#upload input[type=file]").set_input_files(str(bad))
        message = page.get_by_text("report.png: is a text file, not an image")
        sync_api.expect(message.first).to_be_visible(timeout=TIMEOUT_MS)
        assert message.count() == 1, "one message, not several"
        page.wait_for_timeout(1500)  # the toast slides in
        page.screenshot(path=str(tmp_path / "error.png"))
    finally:
        page.close()


def test_example_click_classifies(browser: object, page_url: str, predictor: Predictor, data_dir: Path) -> None:
    image = data_dir / "samples" / "hannover_covid_fff13f3a.png"
    expected = predictor.predict([image])[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.get_by_text(f"{image.name} (COVID-19)").click()
        sync_api.expect(page.locator("#upload")).to_contain_text(image.name[:12])
        top = max(expected, key=expected.get)
        sync_api.expect(page.locator("#probabilities")).to_contain_text(top, timeout=TIMEOUT_MS)  # at once
        sync_api.expect(page.locator("#gradcam img")).to_be_visible(timeout=TIMEOUT_MS)
        page.get_by_role("button", name="Classify").click()  # and again with the button
        sync_api.expect(page.locator("#probabilities")).to_contain_text(top, timeout=TIMEOUT_MS)
        sync_api.expect(page.locator("#gradcam img")).to_be_visible(timeout=TIMEOUT_MS)
    finally:
        page.close()
