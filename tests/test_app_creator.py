"""The creator's page (issue #18) in Chromium on `app.py --tiny`: the two-column layout at
desktop sizes and one column on a phone, the Models tab's states and a download with its
progress bar from the local hub (`tests/app_server.LocalHub`, the catalog's real download
code), the one missing-models message before a job and its download button, live previews
during a generation, variations side by side, History after a reload in the browser's own
time zone, and Reuse restoring the reference and the pose video. Screenshots of every step
go to tests/artifacts/ (git-ignored).

Shares the session's tiny app server (conftest `tiny_app`) with the other browser tests.
"""

import json
import shutil
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.test_app_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    STEP_TIMEOUT_MS,
    shot,
    shot_on_failure,
    upload_reference,
    wait_for_text,
)

pytestmark = pytest.mark.browser

TIME_ZONE = "Asia/Tokyo"  # not the server's: History must show the browser's local time
CLIP = ROOT / "assets" / "dance_figure.mp4"


@pytest.fixture(scope="module")
def browser_page(tiny_app):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (`apt-get install -y chromium`).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # One context for the module: its local storage (the browser id) survives reloads.
            context = browser.new_context(viewport={"width": 1920, "height": 1080}, timezone_id=TIME_ZONE)
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def open_page(page, tiny_app, width: int = 1920, height: int = 1080) -> None:
    page.set_viewport_size({"width": width, "height": height})
    page.goto(tiny_app.url, wait_until="domcontentloaded")
    page.get_by_text("Tiny mode").first.wait_for()


def in_viewport(page, selector: str) -> bool:
    """The element's whole box lies inside the visible part of the window."""
    return page.locator(selector).evaluate(
        "e => { const r = e.getBoundingClientRect(); return r.height > 0 && r.top >= 0 && r.left >= 0"
        " && r.bottom <= innerHeight && r.right <= innerWidth; }"
    )


def load_inputs(page) -> None:
    upload_reference(page)
    page.locator("#driving-video input[type=file]").set_input_files(str(CLIP))
    page.locator("#driving-video video").wait_for()
    page.locator("#prompt textarea").fill("A cartoon man dances in a plain room.")


def wait_for_result(page, old_src: str | None = None) -> str:
    page.wait_for_function(
        "old => { const v = document.querySelector('#result-video video');"
        " return v && v.duration > 0 && v.getAttribute('src') !== old; }",
        arg=old_src,
    )
    return page.locator("#result-video video").get_attribute("src")


def model_state(page, name: str, state: str) -> None:
    """Waits until the Models tab's row of `name` is in `state` (on disk / partial / missing)."""
    page.locator(f'#model-{name} .model-row[data-state="{state}"]').wait_for()


def set_number(page, selector: str, value) -> None:
    field = page.locator(selector)
    field.fill(str(value))
    field.blur()


def test_two_columns_keep_generate_and_the_result_in_view(browser_page, tiny_app):
    page = browser_page
    with shot_on_failure(page, "layout"):
        for width, height in ((1920, 1080), (1366, 768)):
            open_page(page, tiny_app, width, height)
            assert in_viewport(page, "#generate") and in_viewport(page, "#result-video"), (width, height)
            # Inputs left, Generate right, side by side
            inputs, generate = (page.locator(s).bounding_box() for s in ("#inputs-column", "#generate-column"))
            assert inputs["x"] + inputs["width"] <= generate["x"]
            # The crop preview and the mask views side by side
            boxes = [page.locator(s).bounding_box() for s in ("#crop-preview", "#mask-preview", "#masked-preview")]
            assert len({round(box["y"]) for box in boxes}) == 1 and boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
            shot(page, f"creator_01_layout_{width}x{height}")
            # Scrolled down to the prompt: the Generate column stays (sticky)
            page.locator("#auto-caption").scroll_into_view_if_needed()
            page.mouse.wheel(0, 600)
            page.wait_for_timeout(300)
            assert page.evaluate("() => scrollY") > 300
            assert in_viewport(page, "#generate") and in_viewport(page, "#result-video"), (width, height)
            page.screenshot(path=str(Path(__file__).parent / "artifacts" / f"creator_02_scrolled_{width}x{height}.png"))

        # A phone: one column, nothing wider than the screen
        open_page(page, tiny_app, 390, 844)
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
        inputs, generate = (page.locator(s).bounding_box() for s in ("#inputs-column", "#generate-column"))
        assert generate["y"] >= inputs["y"] + inputs["height"] - 1
        shot(page, "creator_03_phone")


def test_models_tab_states_and_a_download_with_progress(browser_page, tiny_app):
    page = browser_page
    # A model the tiny weights lack, put on the local hub (a few MB, sent over ~2 s)
    repo = tiny_app.hub.root / "Qwen" / "Qwen2-VL-7B-Instruct"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (repo / "model.safetensors").write_bytes(bytes(range(256)) * 12_000)
    with shot_on_failure(page, "models"):
        open_page(page, tiny_app)
        page.get_by_role("tab", name="Models").click()
        model_state(page, "base", "on disk")
        model_state(page, "qwen2vl_7b", "missing")
        row = page.locator("#model-qwen2vl_7b").inner_text()
        assert "16.6 GB to download" in row and "python -m dynamictrl download qwen2vl_7b" in row
        assert page.locator("#model-qwen2vl_7b a").get_attribute("href").startswith("https://")
        shot(page, "creator_04_models")

        page.locator("#download-qwen2vl_7b").click()
        # The progress bar: bytes done of the total, the speed and the time left
        page.wait_for_function(
            "() => /MB of [0-9.]+ MB \\(\\d+%\\), [0-9.]+ [kM]?B\\/s, \\d+ s left/"
            ".test(document.querySelector('#model-qwen2vl_7b')?.parentElement?.innerText || '')"
        )
        shot(page, "creator_05_downloading")
        model_state(page, "qwen2vl_7b", "on disk")
        shot(page, "creator_06_downloaded")
    from dynamictrl import catalog

    assert (catalog.spec("qwen2vl_7b").path(tiny_app.weights) / "model.safetensors").stat().st_size == 256 * 12_000


def test_one_message_lists_the_missing_models_and_its_button_fetches_them(browser_page, tiny_app):
    from dynamictrl import catalog

    page = browser_page
    folder = catalog.spec("mask_clothing").path(tiny_app.weights)
    on_hub = tiny_app.hub.root / catalog.spec("mask_clothing").repo_id
    on_hub.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, on_hub)  # gone from the server's disk, on the hub instead
    with shot_on_failure(page, "missing"):
        open_page(page, tiny_app)
        load_inputs(page)
        # Previewing a mask does not change what Generate uses; "Use this mask" does
        page.locator("#mask-clothing").click()
        page.locator("#mask-preview img").wait_for()
        wait_for_text(page, "#mask-status", "none (the model sees the whole crop)")
        page.locator("#use-mask").click()
        wait_for_text(page, "#mask-status", "DynamiCtrl Mask_C01")
        page.locator("#generate").click()
        wait_for_text(page, "#missing-models", "DynamiCtrl Mask_C01")
        message = page.locator("#missing-models").inner_text()
        assert "11.5 GB" in message and "python -m dynamictrl download mask_clothing" in message
        assert page.locator("[data-testid=toast-body]").count() == 0  # one message, no toast
        assert page.locator("#result-video video").count() == 0
        shot(page, "creator_07_missing_models")

        page.locator("#download-missing").click()
        page.locator("#missing-models").wait_for(state="hidden")
        assert catalog.status("mask_clothing", tiny_app.weights).state == catalog.ON_DISK
        page.locator("#generate").click()
        wait_for_result(page)
        shot(page, "creator_08_generated_after_download")
        # "No mask" in one click: the base transformer again
        page.locator("#no-mask").click()
        wait_for_text(page, "#mask-status", "DynamiCtrl (base)")


def test_live_previews_show_while_the_video_forms(browser_page, tiny_app):
    page = browser_page
    with shot_on_failure(page, "preview"):
        open_page(page, tiny_app)
        load_inputs(page)
        page.get_by_text("More settings").click()
        set_number(page, "#preview-every input", 1)
        set_number(page, "#steps input[type=number]", 60)
        # Every preview the page shows, and whether the result was there yet
        page.evaluate("""() => { window.previews = [];
            new MutationObserver(() => {
                const img = document.querySelector('#live-preview img');
                const label = document.querySelector('#live-preview')?.innerText || '';
                const done = !!document.querySelector('#result-video video');
                if (img && img.src && !window.previews.some(p => p.src === img.src))
                    window.previews.push({src: img.src, label, done});
            }).observe(document.body, {subtree: true, childList: true, attributes: true}); }""")
        page.locator("#generate").click()
        wait_for_result(page)
        previews = page.evaluate("() => window.previews")
        shot(page, "creator_09_preview_and_result")
        assert any(not p["done"] for p in previews), previews  # seen while the job ran
        assert any("step" in p["label"] for p in previews), previews


def test_variations_finish_side_by_side_and_one_is_picked(browser_page, tiny_app):
    page = browser_page
    with shot_on_failure(page, "variations"):
        open_page(page, tiny_app)
        load_inputs(page)
        set_number(page, "#seed input", 100)
        page.get_by_text("Variations: several seeds").click()
        set_number(page, "#variations-count input[type=number]", 3)
        page.locator("#variations-run").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#variations-gallery video, #variations-gallery img').length >= 1"
        )
        shot(page, "creator_10_first_variation")
        wait_for_text(page, "#variations-gallery", "seed 102")
        labels = page.locator("#variations-gallery").inner_text()
        assert "seed 100" in labels and "seed 101" in labels
        shot(page, "creator_11_variations")
        page.locator("#variations-gallery").get_by_text("seed 101").click()
        page.locator("#use-variation").click()
        page.wait_for_function("() => document.querySelector('#seed input')?.value === '101'")
        wait_for_result(page)
        page.locator("#lipsync-variation").click()
        page.locator("#lipsync-video video").wait_for()
        shot(page, "creator_12_variation_to_lipsync")


def test_history_after_a_reload_and_reuse_restores_the_inputs(browser_page, tiny_app):
    page = browser_page
    with shot_on_failure(page, "history"):
        open_page(page, tiny_app)
        load_inputs(page)
        set_number(page, "#seed input", 4321)
        page.locator("#generate").click()
        wait_for_result(page)
        manifest = json.loads(next(tiny_app.outputs.rglob("*seed4321.json")).read_text())

        # A reload: the same browser, the same History, in its local time
        open_page(page, tiny_app)
        page.get_by_role("tab", name="History").click()
        wait_for_text(page, "#history-table", manifest["output"])
        local = datetime.fromisoformat(manifest["created"]).astimezone(ZoneInfo(TIME_ZONE)).strftime("%Y-%m-%d %H:%M")
        wait_for_text(page, "#history-table", local)
        header = page.locator("#history-table thead").inner_text()
        for column in ("when", "prompt", "size", "frames", "duration", "seed", "steps", "variant"):
            assert column in header
        page.wait_for_function(
            "() => [...document.querySelectorAll('#history-table img')].some(i => i.complete && i.naturalWidth > 0)"
        )
        shot(page, "creator_13_history_after_reload")
        page.get_by_text("Selected result's settings").click()

        page.locator("#history-table").get_by_text(manifest["output"], exact=True).filter(visible=True).click()
        wait_for_text(page, "#history-manifest", manifest["output"])
        page.locator("#reuse-settings").click()
        page.wait_for_function("() => document.querySelector('#seed input')?.value === '4321'")
        page.locator("#reference-image img").wait_for()
        page.locator("#crop-preview img").wait_for()
        page.locator("#driving-video video").wait_for()
        assert page.locator("#is-pose-video input[type=checkbox]").is_checked()  # the result's own poses
        shot(page, "creator_14_reused_inputs")

        # A malformed manifest: one clear message
        folder = next(tiny_app.outputs.rglob(manifest["output"])).parent
        broken = {
            **manifest,
            "output": "29990101-000003_beef_seed1.mp4",
            "created": "2999-01-01T00:00:03+00:00",
            "settings": {**manifest["settings"], "width": "wide"},
        }
        shutil.copyfile(folder / manifest["output"], folder / broken["output"])
        (folder / broken["output"]).with_suffix(".json").write_text(json.dumps(broken))
        try:
            page.get_by_role("tab", name="History").click()
            page.locator("#refresh-history").click()
            wait_for_text(page, "#history-table", broken["output"])
            page.locator("#history-table").get_by_text(broken["output"], exact=True).filter(visible=True).click()
            wait_for_text(page, "#history-manifest", broken["output"])
            page.locator("#reuse-settings").click()
            page.get_by_text("is malformed (bad width)").first.wait_for()
            shot(page, "creator_15_malformed_manifest")
        finally:
            (folder / broken["output"]).unlink()
            (folder / broken["output"]).with_suffix(".json").unlink()
