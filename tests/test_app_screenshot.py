"""The README's picture of the app: `app.py --tiny` in Chromium with the example photo and
clip loaded, the poses extracted and a result generated (with its last live preview beside
it), saved to tests/artifacts/app.png. With
DYNAMICTRL_UPDATE_SCREENSHOT=1 it also replaces assets/app.png (the committed copy):

    DYNAMICTRL_UPDATE_SCREENSHOT=1 python -m pytest tests/test_app_screenshot.py
"""

import io
import os

import pytest

from tests.test_app_browser import ARTIFACTS, ROOT, page, upload_reference, wait_for_text  # noqa: F401 (page: the fixture)

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "assets" / "app.png"
MAX_BYTES = 400 * 1024  # the README loads it on every visit


def test_screenshot_of_the_app_for_the_readme(page, tiny_app):  # noqa: F811 (the imported fixture)
    from PIL import Image

    page.get_by_text("Tiny mode").first.wait_for()
    upload_reference(page)
    wait_for_text(page, "#crop-info", "of the 384x640 photo")
    page.locator("#driving-video input[type=file]").set_input_files(str(ROOT / "assets" / "dance_figure.mp4"))
    page.locator("#driving-video video").wait_for()
    page.locator("#extract-poses").click()
    page.locator("#pose-overlay video").wait_for()
    page.locator("#generate").click()
    page.wait_for_function(
        "() => { const v = document.querySelector('#result-video video'); return v && v.duration > 0; }"
    )
    page.locator("#live-preview img").wait_for()
    page.evaluate("() => window.scrollTo(0, 0)")

    image = Image.open(io.BytesIO(page.screenshot(full_page=False))).convert("RGB")
    assert image.size == (1400, 1000)
    assert len(set(image.resize((140, 100)).getdata())) > 50, "the screenshot is blank"
    # A 256-colour palette keeps the PNG small; the page is flat UI colours and thumbnails.
    small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    ARTIFACTS.mkdir(exist_ok=True)
    small.save(ARTIFACTS / "app.png", optimize=True)
    assert (ARTIFACTS / "app.png").stat().st_size < MAX_BYTES
    if os.environ.get("DYNAMICTRL_UPDATE_SCREENSHOT") == "1":
        small.save(SCREENSHOT, optimize=True)
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size < MAX_BYTES, (
        f"{SCREENSHOT} is missing or too big: DYNAMICTRL_UPDATE_SCREENSHOT=1 python -m pytest {__file__}"
    )
