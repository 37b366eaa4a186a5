"""A user's walk through `app.py --tiny` in a real browser (Playwright driving Debian's
Chromium): upload, person mask, example clip, extract poses, auto caption, generate,
lip-sync, history. Screenshots of every step go to tests/artifacts/ (git-ignored).

Needs `/usr/bin/chromium` (`apt-get install -y chromium`; `.ci/run` installs it). The
test fails rather than skips without it, so a CI that lost the browser says so.
"""

import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
STEP_TIMEOUT_MS = 90_000  # one tiny model call takes seconds; this bounds a hung step
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page(tiny_app):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get update && apt-get install -y "
                    "chromium` (.ci/run does this) to run the browser test.")
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a fresh --user-data-dir.
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(tiny_app.url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()
            shutil.rmtree(profile, ignore_errors=True)


def speech_file() -> Path:
    """Two seconds of a voiced, wobbling tone as a 16-bit wav."""
    import numpy as np
    from scipy.io import wavfile

    path = Path(tempfile.mkdtemp(prefix="speech-")) / "speech.wav"
    t = np.arange(32000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t))
    wavfile.write(path, 16000, (wave * 32767 / 2).astype(np.int16))
    return path


def wait_for_text(page, selector: str, text: str) -> None:
    """Waits until the element's rendered text contains `text` (tables also keep hidden copies)."""
    page.wait_for_function(
        "([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)", arg=[selector, text]
    )


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_user_goes_from_photo_to_video(page, tiny_app):
    try:
        walk_through(page, tiny_app)
    except Exception:
        shot(page, "failed")
        raise


def walk_through(page, tiny_app):
    page.get_by_text("Tiny mode").first.wait_for()
    shot(page, "01_loaded")

    # 1. Character: upload, crop preview, person mask
    page.locator("#reference-image input[type=file]").set_input_files(str(ROOT / "assets" / "reference_figure.png"))
    page.locator("#crop-preview img").wait_for()
    page.locator("#mask-person").click()
    page.locator("#mask-preview img").wait_for()
    shot(page, "02_character_masked")

    # 2. Motion: the example clip, extract poses, previews appear
    page.locator("#driving-video input[type=file]").set_input_files(str(ROOT / "assets" / "dance_figure.mp4"))
    page.locator("#driving-video video").wait_for()
    page.locator("#extract-poses").click()
    page.locator("#pose-video video").wait_for()
    page.locator("#pose-overlay video").wait_for()
    shot(page, "03_poses")

    # 3. Prompt: auto caption fills the textbox; with the background masked it ends in a
    # placeholder that the user replaces (the hint says so)
    page.locator("#auto-caption").click()
    page.wait_for_function("() => document.querySelector('#prompt textarea').value.trim().length > 0")
    prompt = page.locator("#prompt textarea")
    assert "[Describe the new background here.]" in prompt.input_value()
    page.locator("#consistency-hint").get_by_text("Replace the").wait_for()
    prompt.fill(prompt.input_value().replace("[Describe the new background here.]", "A sunny beach."))
    prompt.blur()
    shot(page, "04_caption")

    # 4. Generate: a playable video appears
    page.locator("#generate").click()
    video = page.locator("#result-video video")
    video.wait_for()
    page.wait_for_function(
        "() => { const v = document.querySelector('#result-video video'); return v && v.duration > 0; }"
    )
    assert video.evaluate("v => v.duration") > 0
    shot(page, "05_result")

    # Lip-sync: the result speaks a short clip
    page.get_by_role("tab", name="Lip-sync").click()
    page.locator("#lipsync-use-result").click()
    page.locator("#lipsync-video video").wait_for()
    page.locator("#lipsync-audio input[type=file]").set_input_files(str(speech_file()))
    page.locator("#lipsync-run").click()
    page.wait_for_function(
        "() => { const v = document.querySelector('#lipsync-result video'); return v && v.duration > 0; }"
    )
    wait_for_text(page, "#lipsync-report", "frames at 16 fps")
    shot(page, "06_lipsync")

    # History lists both results
    page.get_by_role("tab", name="History").click()
    newest = max(tiny_app.outputs.glob("*_lipsync.json")).with_suffix(".mp4").name
    wait_for_text(page, "#history-table", newest)
    wait_for_text(page, "#history-table", "lip-sync to")
    shot(page, "07_history")

    page.get_by_role("tab", name="System").click()
    wait_for_text(page, "#models-table", "dynamictrl.shared")
    shot(page, "08_system")
