"""End to end in a real browser: Debian's chromium, headless, driven by Playwright.

Opens the page, uploads a real X-ray, waits for the class probabilities and the
Grad-CAM overlay, checks a bad file gives one message, and saves screenshots under
``$SSLMED_SCREENSHOT_DIR`` (default: the system's temporary folder), in
``sslmed-browser-screenshots/``. With ``SSLMED_UPDATE_SCREENSHOTS=1`` the page screenshot is also
copied to ``docs/images/demo.png``; ``SSLMED_SCREENSHOT_MODEL`` may name a run folder
to show instead of the small test model (e.g. a finished quickstart run).

Skips with a message when chromium or Playwright is missing
(``apt-get install -y chromium``; ``.ci/run`` does this).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslmed.serving.predict import Predictor
from sslmed.serving.web.page import build_demo
from sslmed.testing.models import shared_model_export
from sslmed.testing.web import launched_demo

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
REPO = Path(__file__).resolve().parents[2]
#: screenshots are kept here after the run (pytest removes a passing test's tmp_path)
SCREENSHOTS = Path(os.environ.get("SSLMED_SCREENSHOT_DIR", tempfile.gettempdir())) / "sslmed-browser-screenshots"


def shot(name: str) -> Path:
    """Where the screenshot ``name`` goes (outside the repository, kept after the tests)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / name


TIMEOUT_MS = 90_000
DEMO_MAX_UPLOAD_MB = 2.0  # the samples are under 0.4 MB; a small limit keeps the oversize file small

pytestmark = [
    pytest.mark.needs_chromium,
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
    demo = build_demo(predictor, examples_dir=samples, max_upload_mb=DEMO_MAX_UPLOAD_MB)
    with launched_demo(demo, examples_dir=samples, max_upload_mb=DEMO_MAX_UPLOAD_MB, api=True) as url:
        yield url


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
        page.get_by_role("button", name="Classify", exact=True).wait_for()
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
        screenshot = shot("demo.png")
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
        page.get_by_role("button", name="Classify", exact=True).wait_for()
        page.locator("#upload input[type=file]").set_input_files(str(bad))
        message = page.get_by_text("report.png: is a text file, not an image")
        sync_api.expect(message.first).to_be_visible(timeout=TIMEOUT_MS)
        assert message.count() == 1, "one message, not several"
        assert message.first.inner_text().startswith("Not a readable image — ")  # titled by what went wrong
        page.wait_for_timeout(1500)  # the toast slides in
        page.screenshot(path=str(shot("error.png")))
    finally:
        page.close()


def test_example_click_classifies(browser: object, page_url: str, predictor: Predictor, data_dir: Path) -> None:
    image = data_dir / "samples" / "hannover_covid_fff13f3a.png"
    expected = predictor.predict([image])[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.get_by_text(f"{image.name} (true: Covid-19)").click()
        sync_api.expect(page.locator("#upload")).to_contain_text(image.name[:12])
        top = max(expected, key=expected.get)
        sync_api.expect(page.locator("#probabilities")).to_contain_text(top, timeout=TIMEOUT_MS)  # at once
        sync_api.expect(page.locator("#gradcam img")).to_be_visible(timeout=TIMEOUT_MS)
        outcome = page.locator("#example-outcome")
        verdict = "right" if top == "Covid-19" else "wrong"
        sync_api.expect(outcome).to_contain_text(f"true label Covid-19; the model's top class is {top}: {verdict}")
        sync_api.expect(page.locator("#gradcam-caption")).to_contain_text("Grad-CAM on layer layer4")
        page.get_by_role("button", name="Classify", exact=True).click()  # and again with the button
        sync_api.expect(page.locator("#probabilities")).to_contain_text(top, timeout=TIMEOUT_MS)
        sync_api.expect(page.locator("#gradcam img")).to_be_visible(timeout=TIMEOUT_MS)
    finally:
        page.close()


def test_image_unlike_the_training_data_shows_the_warning(
    browser: object, page_url: str, predictor: Predictor, data_dir: Path, tmp_path: Path
) -> None:
    """An image of not_cxr that the model flags gets the warning above the probabilities;
    a chest radiograph gets none, and its Grad-CAM has the size of the model's view."""
    folders = sorted((data_dir / "not_cxr" / "images").iterdir())
    candidates = [path for folder in folders for path in sorted(folder.glob("*.jpeg"))[:8]]
    flagged = [path for path, result in zip(candidates, predictor.analyse(candidates), strict=True) if result.ood_flag]
    assert flagged, f"the model flags none of {len(candidates)} not-chest images"
    chest = data_dir / "samples" / "hannover_covid_fff13f3a.png"
    assert not predictor.analyse([chest])[0].ood_flag
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.get_by_role("button", name="Classify", exact=True).wait_for()
        sync_api.expect(page.locator("#trained-on")).to_contain_text("What this model was trained on")
        page.locator("#upload input[type=file]").set_input_files(str(flagged[0]))
        warning = page.locator("#ood-warning")
        sync_api.expect(warning).to_contain_text("unlike the images this model was trained on", timeout=TIMEOUT_MS)
        warning_box, label_box = warning.bounding_box(), page.locator("#probabilities").bounding_box()
        assert warning_box["y"] < label_box["y"], "the warning stands above the probabilities"
        page.wait_for_timeout(500)
        page.screenshot(path=str(shot("ood-warning.png")), full_page=True)
        page.goto(page_url)  # a fresh page: the upload box holds one file
        page.get_by_role("button", name="Classify", exact=True).wait_for()
        page.locator("#upload input[type=file]").set_input_files(str(chest))
        sync_api.expect(page.locator("#gradcam img")).to_be_visible(timeout=TIMEOUT_MS)
        sync_api.expect(warning).not_to_contain_text("unlike the images")
        view, overlay = page.locator("#model-view img").bounding_box(), page.locator("#gradcam img").bounding_box()
        assert abs(view["width"] - overlay["width"]) < 2 and abs(view["height"] - overlay["height"]) < 2
    finally:
        page.close()


def test_a_file_far_over_the_limit_gets_sslmeds_message(browser: object, page_url: str, tmp_path: Path) -> None:
    """Refused by the server before it is stored, in sslmed's words (not Gradio's)."""
    huge = tmp_path / "scan.png"
    with open(huge, "wb") as handle:
        handle.truncate(int(DEMO_MAX_UPLOAD_MB * 2e6 + 2e6))  # past the hard limit (twice it + 1 MB)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.get_by_role("button", name="Classify", exact=True).wait_for()
        page.locator("#upload input[type=file]").set_input_files(str(huge))
        message = page.get_by_text(f"the limit is {DEMO_MAX_UPLOAD_MB:g} MB")
        sync_api.expect(message.first).to_be_visible(timeout=TIMEOUT_MS)
    finally:
        page.close()


def test_several_files_give_a_table_and_a_csv_download(
    browser: object, page_url: str, predictor: Predictor, data_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    files = [data_dir / "samples" / "hannover_covid_fff13f3a.png", data_dir / "samples" / "covid_cxnet_007.jpg", bad]
    page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.locator("#batch-upload input[type=file]").set_input_files([str(f) for f in files])
        sync_api.expect(page.locator("#batch-upload")).to_contain_text("notes")
        page.get_by_role("button", name="Classify all").click()
        table = page.locator("#batch-table")
        sync_api.expect(table).to_contain_text("covid_cxnet_007.jpg", timeout=TIMEOUT_MS)
        sync_api.expect(table).to_contain_text("is a text file, not an image")
        link = page.locator("#batch-csv a").first
        sync_api.expect(link).to_be_visible(timeout=TIMEOUT_MS)
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / "predictions.csv"
        download.value.save_as(saved)
        lines = saved.read_text().splitlines()
        assert lines[0].startswith("file,top class,") and len(lines) == 4
        assert lines[1].split(",")[1] == max(predictor.predict([files[0]])[0], key=predictor.predict([files[0]])[0].get)
        page.screenshot(path=str(shot("batch.png")), full_page=True)
    finally:
        page.close()


def test_keyboard_only_classifies_an_example(browser: object, page_url: str, tmp_path: Path) -> None:
    """Tab to the first example and press Enter: it is classified, no mouse used."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url)
        page.get_by_role("button", name="Classify", exact=True).wait_for()
        for _ in range(60):
            page.keyboard.press("Tab")
            focused = page.evaluate("() => document.activeElement && document.activeElement.innerText || ''")
            if "(true:" in focused:
                break
        else:
            pytest.fail("no example is reachable with the Tab key")
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#example-outcome")).to_contain_text("true label", timeout=TIMEOUT_MS)
        page.screenshot(path=str(shot("keyboard.png")), full_page=True)
    finally:
        page.close()
