"""A user's walk through `app.py --tiny` in a real browser (Playwright driving Debian's
Chromium): upload, person check and background mask, example clip, extract poses, auto
caption, generate, lip-sync, history; then the side paths: mask starts and SAM clicks,
Cancel during a generation, and History's "Reuse settings". Screenshots of every step go
to tests/artifacts/ (git-ignored).

Needs `/usr/bin/chromium` (`apt-get install -y chromium`; `.ci/run` installs it). The
test fails rather than skips without it, so a CI that lost the browser says so.
"""

import contextlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

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
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get update && apt-get install -y "
            "chromium` (.ci/run does this) to run the browser test."
        )
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a fresh --user-data-dir.
        browser = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
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


@contextlib.contextmanager
def shot_on_failure(page, name: str):
    try:
        yield
    except Exception:
        shot(page, f"failed_{name}")
        raise


def fresh_page(page, tiny_app) -> None:
    """A reload: every widget back to its default, a new gradio session (History stays: it
    belongs to the browser)."""
    page.goto(tiny_app.url, wait_until="domcontentloaded")
    page.get_by_text("Tiny mode").first.wait_for()


def session_outputs(page, tiny_app) -> Path:
    """The page's results folder: one per browser (an id in its local storage, encrypted, so
    not readable here); History lists only it. Found as the folder of the newest result."""
    newest = max(tiny_app.outputs.rglob("*.json"), key=lambda path: path.stat().st_mtime)
    return newest.parent


def output_files(tiny_app) -> list[str]:
    """Every result file under the outputs root, whichever session made it."""
    return sorted(str(path.relative_to(tiny_app.outputs)) for path in tiny_app.outputs.rglob("*") if path.is_file())


def upload_reference(page) -> None:
    page.locator("#reference-image input[type=file]").set_input_files(str(ROOT / "assets" / "reference_figure.png"))
    page.locator("#crop-preview img").wait_for()


def expect_mask_mode(page, mode: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(f"#mask-mode input[value={mode}]")).to_be_checked(timeout=STEP_TIMEOUT_MS)


def wait_for_new_image(page, selector: str, old_src: str | None) -> str:
    """Waits until the image under `selector` shows something other than `old_src`; its src."""
    page.wait_for_function(
        "([selector, old]) => { const img = document.querySelector(selector);"
        " return img && img.src && img.src !== old && img.complete && img.naturalWidth > 0; }",
        arg=[f"{selector} img", old_src],
    )
    return page.locator(f"{selector} img").get_attribute("src")


def marker_pixels(page, selector: str) -> dict:
    """How many pixels of the image are exactly the green (add) and red (remove) point markers."""
    return page.locator(f"{selector} img").evaluate(
        """img => {
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth;
            canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let green = 0, red = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === 0 && data[i + 1] === 220 && data[i + 2] === 0) green++;
                if (data[i] === 230 && data[i + 1] === 0 && data[i + 2] === 0) red++;
            }
            return {green, red, width: img.naturalWidth, height: img.naturalHeight};
        }"""
    )


def click_image_at(page, selector: str, fx: float, fy: float) -> None:
    """A click at a fraction of the picture's width and height. The <img> box can be larger
    than the picture; gradio centres it, scaled down to fit and never up, and maps clicks
    to its pixels the same way."""
    image = page.locator(f"{selector} img")
    box = image.bounding_box()
    natural_width, natural_height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / natural_width, box["height"] / natural_height, 1)
    left = (box["width"] - natural_width * scale) / 2
    top = (box["height"] - natural_height * scale) / 2
    image.click(position={"x": left + natural_width * scale * fx, "y": top + natural_height * scale * fy})


def test_a_user_goes_from_photo_to_video(page, tiny_app):
    with shot_on_failure(page, "walk_through"):
        walk_through(page, tiny_app)


def walk_through(page, tiny_app):
    page.get_by_text("Tiny mode").first.wait_for()
    shot(page, "01_loaded")

    # 1. Character: upload, crop preview (and where it falls on the photo), the person
    # check (nothing blacked out), then the background blacked out
    upload_reference(page)
    wait_for_text(page, "#crop-info", "of the 384x640 photo")
    page.locator("#mask-person").click()
    person_view = wait_for_new_image(page, "#mask-preview", None)
    wait_for_text(page, "#mask-info", "Person check")
    expect_mask_mode(page, "none")
    shot(page, "02_character_person_check")
    page.locator("#mask-background").click()
    wait_for_new_image(page, "#mask-preview", person_view)
    expect_mask_mode(page, "none")  # a preview: Generate's mask changes only with "Use this mask"
    page.locator("#use-mask").click()
    expect_mask_mode(page, "background")
    wait_for_text(page, "#mask-status", "DynamiCtrl Mask_B01")
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
    newest = max(tiny_app.outputs.rglob("*_lipsync.json"), key=lambda path: path.stat().st_mtime)
    newest = newest.with_suffix(".mp4").name
    wait_for_text(page, "#history-table", newest)
    wait_for_text(page, "#history-table", "lip-sync to")
    shot(page, "07_history")

    page.get_by_role("tab", name="System").click()
    wait_for_text(page, "#models-table", "dynamictrl.shared")
    shot(page, "08_system")


def test_mask_starts_and_sam_clicks(page, tiny_app):
    with shot_on_failure(page, "mask"):
        fresh_page(page, tiny_app)
        upload_reference(page)

        # Clothing: the clothes blacked out in the preview; Generate's mask stays none
        page.locator("#mask-clothing").click()
        clothing_view = wait_for_new_image(page, "#mask-preview", None)
        expect_mask_mode(page, "none")
        page.locator("#masked-preview img").wait_for()

        # Clear, then a click on the crop: SAM segments from the point (a background preview),
        # a green marker where the click landed
        page.locator("#clear-mask").click()
        expect_mask_mode(page, "none")
        page.locator("#mask-preview img").wait_for(state="detached")
        click_image_at(page, "#crop-preview", 0.5, 0.4)
        first = wait_for_new_image(page, "#mask-preview", clothing_view)
        pixels = marker_pixels(page, "#mask-preview")
        assert pixels["green"] > 0 and pixels["red"] == 0, pixels

        # A "remove" click elsewhere adds a red marker and keeps the green one
        page.locator("#click-label").get_by_text("remove (exclude)").click()
        click_image_at(page, "#crop-preview", 0.2, 0.9)
        wait_for_new_image(page, "#mask-preview", first)
        pixels = marker_pixels(page, "#mask-preview")
        assert pixels["green"] > 0 and pixels["red"] > 0, pixels
        expect_mask_mode(page, "none")
        # Used: Generate's mask is the background one with both clicks; "No mask" drops it
        page.locator("#use-mask").click()
        expect_mask_mode(page, "background")
        wait_for_text(page, "#mask-status", "2 clicks on the crop")
        shot(page, "09_mask_clicks")
        page.locator("#no-mask").click()
        expect_mask_mode(page, "none")
        wait_for_text(page, "#mask-status", "DynamiCtrl (base)")


def test_cancel_keeps_the_previous_result_and_says_cancelled(page, tiny_app):
    with shot_on_failure(page, "cancel"):
        fresh_page(page, tiny_app)
        upload_reference(page)
        page.locator("#driving-video input[type=file]").set_input_files(str(ROOT / "assets" / "dance_figure.mp4"))
        page.locator("#driving-video video").wait_for()
        # A first, quick result (the tiny defaults): what Cancel must leave on the page
        page.locator("#generate").click()
        page.wait_for_function(
            "() => { const v = document.querySelector('#result-video video'); return v && v.duration > 0; }"
        )
        first_result = page.locator("#result-video video").get_attribute("src")
        # 45 frames (the poses of 44 driving frames, two windows) at 100 steps: about 5 s on
        # 2 idle cores, the margin between the job's start and its end
        page.locator("#frames input").fill("45")
        steps = page.locator("#steps input[type=number]")
        steps.fill("100")
        steps.blur()
        # Steps changed by hand: the Quality/speed label no longer names a preset
        page.wait_for_function("() => document.querySelector('#speed input')?.value === 'custom'")
        before = output_files(tiny_app)

        page.locator("#generate").click()
        # Cancel once the job reports progress. Its denoising alone lasts ~1.5 s, too short
        # for a loaded machine to click into reliably; and a Cancel that reaches the server
        # before the job starts is reset by it.
        page.wait_for_function(
            "() => /loading models|pose|denoising/.test(document.querySelector('#result-video')?.innerText || '')"
        )
        page.locator("#cancel").click()
        # A note titled "Cancelled" (a warning toast), not an error
        toast = page.locator("[data-testid=toast-body]", has_text="The previous result is kept").first
        toast.wait_for()
        assert "Cancelled" in toast.inner_text() and "Error" not in toast.inner_text(), toast.inner_text()
        # The job is over (no progress left on the Result) and the first result is still shown
        page.wait_for_function(
            "() => !/loading models|pose|denoising/.test(document.querySelector('#result-video')?.innerText || '')"
        )
        shot(page, "10_cancelled")
        assert output_files(tiny_app) == before
        assert page.locator("#result-video video").get_attribute("src") == first_result
        assert page.locator("#result-video").get_by_text("Error").count() == 0


def forge_results(outputs: Path) -> tuple[str, str]:
    """A generated result and a lip-sync result as the studio writes them, dated in the
    future so they head the History list; their output names."""
    from dynamictrl.lipsync.settings import LipSyncSettings
    from dynamictrl.studio import GenerateSettings

    clip = ROOT / "assets" / "dance_figure.mp4"
    settings = GenerateSettings(
        prompt="A dancer on a rooftop at dusk.", num_frames=13, width=64, height=80, steps=7, guidance=4.5, seed=1234
    )
    generated = {
        "output": "29990101-000001_abcd_seed1234.mp4",
        "created": "2999-01-01T00:00:01+00:00",
        "settings": asdict(settings),
        "prompt_used": settings.prompt,
    }
    lipsync = {
        "output": "29990101-000002_abcd_lipsync.mp4",
        "created": "2999-01-01T00:00:02+00:00",
        "kind": "lipsync",
        "settings": asdict(LipSyncSettings()),
        "inputs": {"video": {"path": str(clip)}, "audio": {"path": "/tmp/hello.wav"}},
    }
    outputs.mkdir(parents=True, exist_ok=True)
    for manifest in (generated, lipsync):
        shutil.copyfile(clip, outputs / manifest["output"])
        (outputs / manifest["output"]).with_suffix(".json").write_text(json.dumps(manifest))
    return generated["output"], lipsync["output"]


def select_history_row(page, output: str) -> None:
    page.locator("#history-table").get_by_text(output, exact=True).filter(visible=True).click()
    # The selection reaches the server before Reuse reads it: wait for its settings to show.
    wait_for_text(page, "#history-manifest", output)


def test_history_reuse_settings_fills_the_form(page, tiny_app):
    fresh_page(page, tiny_app)
    outputs = session_outputs(page, tiny_app)
    generated, lipsync = forge_results(outputs)
    try:
        with shot_on_failure(page, "reuse"):
            page.get_by_role("tab", name="History").click()
            wait_for_text(page, "#history-table", generated)
            page.get_by_text("Selected result's settings").click()
            shot(page, "11_history_gallery")

            select_history_row(page, generated)
            page.locator("#reuse-settings").click()
            # Reuse switches to the Create tab with the result's settings
            page.wait_for_function(
                "() => document.querySelector('#seed input')?.value === '1234'"
                " && document.querySelector('#steps input[type=number]')?.value === '7'"
                " && document.querySelector('#prompt textarea')?.value === 'A dancer on a rooftop at dusk.'"
                " && document.querySelector('#frames input')?.value === '13'"
            )
            assert page.locator("#seed input").is_visible()
            shot(page, "12_reused")

            # A lip-sync result has no generation settings: a message, the form untouched
            page.get_by_role("tab", name="History").click()
            select_history_row(page, lipsync)
            page.locator("#reuse-settings").click()
            page.get_by_text("This is a lip-sync result").first.wait_for()
            shot(page, "13_reuse_lipsync")
            page.get_by_role("tab", name="Create").click()
            assert page.locator("#seed input").input_value() == "1234"
    finally:
        for name in (generated, lipsync):
            (outputs / name).unlink(missing_ok=True)
            (outputs / name).with_suffix(".json").unlink(missing_ok=True)


def test_uploaded_pages_and_scripts_never_run(page, tiny_app, tmp_path):
    """Stored XSS: a visitor uploads an HTML page, an SVG, a script and an HTML page named
    .png, then sends their `/gradio_api/file=` links to a victim. Opened in the browser, or
    pulled into the app's own page as <iframe>, <object>, <script> and <img>, none may run
    on the app's origin. The control first runs the same script on the app's page directly,
    so a marker that stays unset means "blocked", not "the check cannot see it"."""
    import httpx
    from playwright.sync_api import Error as PlaywrightError

    from tests.badinputs.make_corpus import XSS_MARKER, XSS_SCRIPT, write_served_cases

    def marker():
        return page.evaluate(f"() => localStorage.getItem('{XSS_MARKER}')")

    def upload(name: str) -> str:
        response = httpx.post(
            f"{tiny_app.url}gradio_api/upload", files={"files": (name, (tmp_path / name).read_bytes())}, timeout=30
        )
        response.raise_for_status()
        return f"{tiny_app.url}gradio_api/file={response.json()[0]}"

    with shot_on_failure(page, "xss"):
        fresh_page(page, tiny_app)
        page.add_script_tag(content=XSS_SCRIPT)  # the control: this one must run
        assert marker() and page.title() == XSS_MARKER
        page.evaluate(f"() => localStorage.removeItem('{XSS_MARKER}')")

        write_served_cases(tmp_path)
        urls = {name: upload(name) for name in ("page.html", "drawing.svg", "script.js", "page.xhtml", "polyglot.png")}
        for name, url in urls.items():
            try:  # a refused file shows the 403 text; an attachment starts a download instead of a page
                page.goto(url, wait_until="load")
            except PlaywrightError as error:
                assert "Download is starting" in str(error) or "ERR_ABORTED" in str(error), str(error)
            page.wait_for_timeout(300)
            assert page.title() != XSS_MARKER, name
        fresh_page(page, tiny_app)
        assert marker() is None, f"a script ran on the app's origin: {marker()}"

        # The same files pulled into the app's page itself.
        page.evaluate(
            """urls => {
                const add = (tag, attrs) => { const e = document.createElement(tag);
                    Object.assign(e, attrs); document.body.appendChild(e); };
                add('iframe', {src: urls['page.html']});
                add('iframe', {src: urls['page.xhtml']});
                add('iframe', {src: urls['polyglot.png']});
                add('object', {data: urls['drawing.svg']});
                add('img', {src: urls['drawing.svg']});
                add('script', {src: urls['script.js']});
            }""",
            urls,
        )
        page.wait_for_timeout(1500)
        assert marker() is None and page.title() != XSS_MARKER, f"a script ran on the app's origin: {marker()}"
        shot(page, "14_uploads_inert")
