import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_layers_point_down_only():
    assert "torch" not in imported_modules(ROOT / "ui")  # ui/ wires widgets, dynamictrl/ computes
    assert not {"gradio", "ui"} & imported_modules(ROOT / "dynamictrl")


def test_app_help_lists_the_flags():
    result = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for flag in ("--host", "--port", "--offload", "--share", "--tiny"):
        assert flag in result.stdout


def test_space_front_matter_pins_gradio():
    readme = (ROOT / "README.md").read_text()
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    pinned = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("gradio=="))
    assert f"sdk_version: {pinned.split('==')[1]}" in front


def test_gpu_duration_grows_with_the_job_and_is_bounded():
    from ui.gpu import estimate_generation_seconds, gpu_job

    small = estimate_generation_seconds(25, 37, 576, 1024)
    official = estimate_generation_seconds(25, 37, 768, 1360)
    assert 60 <= small < official <= 1800
    assert estimate_generation_seconds(200, 101, 2048, 2048) == 1800
    assert gpu_job(60)(len) is len  # no `spaces` package here: a no-op


def test_assets_are_small_and_present():
    for name in ("reference_figure.png", "dance_figure.mp4"):
        assert (ROOT / "assets" / name).stat().st_size < 2 * 1024 * 1024


def test_package_import_is_light_and_cli_help_works():
    code = "import sys, dynamictrl; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False"
    help_text = subprocess.run(
        [sys.executable, "-m", "dynamictrl", "generate", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert help_text.returncode == 0 and "--pose-video" in help_text.stdout


def test_crop_note_says_which_part_of_the_photo_the_model_sees():
    from ui.handlers import _crop_note

    # cover_crop's own rounding: 384x640 scaled to 64x107, the middle 80 rows kept
    assert _crop_note((384, 640), (64, 80)) == "the full width and the middle 75% of the height of the 384x640 photo"
    assert _crop_note((1920, 1080), (768, 1360)) == (
        "the full height and the middle 32% of the width of the 1920x1080 photo"
    )
    assert _crop_note((1536, 2720), (768, 1360)) == "the whole 1536x2720 photo, scaled"


def test_a_cancelled_first_job_leaves_no_session_folder(tmp_path):
    """The studio removes what a stopped job wrote (tests/test_studio.py); the handler drops
    the session folder it made for that job when it stays empty."""
    import gradio as gr
    import pytest

    from dynamictrl.studio import Cancelled
    from ui.handlers import AppConfig, Handlers

    class CancelledStudio:
        extract_poses = mask = caption = lipsync = None  # not reached

        def generate(self, image_path, out_path, settings, progress=None, **kwargs):
            assert out_path.parent.is_dir()  # the session folder exists while the job runs
            raise Cancelled()

    outputs = tmp_path / "outputs"
    (image := tmp_path / "reference.png").write_bytes(b"")
    (video := tmp_path / "dance.mp4").write_bytes(b"")
    handlers = Handlers(CancelledStudio(), AppConfig(outputs_dir=outputs, work_dir=tmp_path / "work"))
    handlers.config.size_presets = {"tiny": (64, 80)}
    with pytest.raises(gr.Error, match="Cancelled"):
        handlers.generate(
            reference=str(image),
            driving=str(video),
            is_pose_video=False,
            size_preset="tiny",
            width=0,
            height=0,
            start=0,
            frames=9,
            fps=16,
            retarget="global",
            mask_mode="background",
            mask_points=[],
            prompt="a person dancing",
            negative_prompt="",
            steps=2,
            guidance=3.0,
            seed=7,
            speed="official (25 steps)",
            offload="auto",
            pose_state={},
            request=None,
            progress=lambda *args, **kwargs: None,
        )
    assert list(outputs.iterdir()) == []


def test_cancel_pressed_while_queued_still_counts_and_is_then_cleared(tmp_path):
    """Cancel may be pressed before a queued job starts; the job must stop at its first
    progress report, and the next job (armed by its click) must run."""
    from unittest import mock

    import gradio as gr
    import pytest

    from ui.handlers import AppConfig, Handlers

    class ReportingStudio:
        extract_poses = mask = caption = None  # not reached
        calls = 0

        def lipsync(self, video_path, audio_path, out_path, settings, progress=None):
            type(self).calls += 1
            progress(0.5, "Lip-sync: frame 1/2")  # raises Cancelled when the flag is set
            raise RuntimeError("ran past a cancel")

    handlers = Handlers(ReportingStudio(), AppConfig(outputs_dir=tmp_path / "out", work_dir=tmp_path / "work"))
    (video := tmp_path / "v.mp4").write_bytes(b"")
    (audio := tmp_path / "a.wav").write_bytes(b"")
    args = dict(
        lipsync_video=str(video),
        speech=str(audio),
        bbox_shift=0,
        extra_margin=10,
        parsing_mode="jaw",
        left_cheek=90,
        right_cheek=90,
    )
    handlers.arm_cancel(None)
    handlers.cancel(None)  # pressed while the job waits in the queue
    with mock.patch("gradio.Info") as note:  # a page's job: "Cancelled", the previous result kept
        assert handlers.lipsync(**args, request=None, progress=lambda *a, **k: None) == {}
    assert note.call_args.kwargs["title"] == "Cancelled"
    handlers.arm_cancel(None)  # the next click
    with pytest.raises(gr.Error, match="ran past a cancel"):
        handlers.lipsync(**args, request=None, progress=lambda *a, **k: None)
    assert ReportingStudio.calls == 2


def test_every_event_is_wired_by_name(tmp_path):
    """Each event passes its inputs as keyword arguments named like the page's widgets (and
    the API parameters), and the wrapper turns a handler's {name: value} into gradio's
    {component: value}: an unknown name is a wiring error, a missing one leaves its widget."""
    import gradio as gr
    import pytest

    from ui.layout import Page, by_name

    page = Page()
    with gr.Blocks():
        page.prompt, page.hint = gr.Textbox(), gr.Markdown()
    outputs = page.widgets(["prompt", "hint"])
    assert by_name(lambda: {"hint": "x"}, outputs)() == {page.hint: "x", page.prompt: gr.skip()}
    assert by_name(lambda: {}, page.widgets(["hint"]))() == {page.hint: gr.skip()}  # not "the value is {}"
    assert by_name(lambda: None, {})() is None
    with pytest.raises(KeyError, match="seed"):
        by_name(lambda: {"seed": 1}, outputs)()
    with pytest.raises(AttributeError):
        page.widgets(["no_such_widget"])

    from tests.test_security import built_page

    app, _config, _studio = built_page(tmp_path, admin_actions=True)
    api = app.get_api_info()["named_endpoints"]
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == [
        "reference",
        "driving",
        "is_pose_video",
        "size_preset",
        "width",
        "height",
        "start",
        "frames",
        "fps",
        "retarget",
        "mask_mode",
        "prompt",
        "negative_prompt",
        "steps",
        "guidance",
        "seed",
        "speed",
        "offload",
        "preview_every",
    ]
    assert [p["parameter_name"] for p in api["/lipsync"]["parameters"]] == [
        "lipsync_video",
        "speech",
        "bbox_shift",
        "extra_margin",
        "parsing_mode",
        "left_cheek",
        "right_cheek",
    ]
    for fn in app.fns.values():  # every input reaches its handler by name, none by position
        if fn.name != "load_example":  # gr.Examples' own event, not ours
            assert len(fn.input_keyword_names) == len(fn.inputs), fn.name


def test_a_cancel_on_the_page_keeps_the_previous_result(tmp_path):
    """A job the page started (armed by its click) and then cancelled returns no new outputs,
    so the page keeps showing the previous result, with a "Cancelled" note rather than an
    error; the session folder it made is gone. The same cancel through the API stays an
    error (tests above)."""
    from unittest import mock

    from dynamictrl.studio import Cancelled
    from ui.handlers import AppConfig, Handlers

    class CancelledStudio:
        extract_poses = mask = caption = lipsync = None
        limits = None

        def generate(self, image_path, out_path, settings, progress=None, **kwargs):
            raise Cancelled()

    outputs = tmp_path / "outputs"
    (image := tmp_path / "reference.png").write_bytes(b"")
    (video := tmp_path / "dance.mp4").write_bytes(b"")
    handlers = Handlers(CancelledStudio(), AppConfig(outputs_dir=outputs, work_dir=tmp_path / "work"))
    handlers.config.size_presets = {"tiny": (64, 80)}
    handlers.arm_cancel(None)  # the Generate click
    with mock.patch("gradio.Info") as note:
        shown = handlers.generate(
            reference=str(image),
            driving=str(video),
            is_pose_video=False,
            size_preset="tiny",
            width=0,
            height=0,
            start=0,
            frames=9,
            fps=16,
            retarget="global",
            mask_mode="none",
            mask_points=[],
            prompt="a person dancing",
            negative_prompt="",
            steps=2,
            guidance=3.0,
            seed=7,
            speed="official (25 steps)",
            offload="auto",
            pose_state={},
            request=None,
            progress=lambda *args, **kwargs: None,
        )
    assert shown == {} and note.call_args.kwargs["title"] == "Cancelled"
    assert list(outputs.iterdir()) == []


def test_the_speed_label_follows_manual_steps(tmp_path):
    from types import SimpleNamespace

    from dynamictrl import presets
    from ui.handlers import CUSTOM_SPEED, DEFAULT_SPEED, AppConfig, Handlers

    studio = SimpleNamespace(extract_poses=None, mask=None, caption=None, lipsync=None)  # not called
    handlers = Handlers(studio, AppConfig(outputs_dir=tmp_path / "out", work_dir=tmp_path / "work"))
    quality, draft = presets.speed_preset("quality"), presets.speed_preset("draft")
    assert handlers.speed_label(quality.steps, DEFAULT_SPEED) == {}  # still the preset
    assert handlers.speed_label(quality.steps + 5, DEFAULT_SPEED) == {"speed": CUSTOM_SPEED}
    assert handlers.speed_label(30, CUSTOM_SPEED) == {"speed": CUSTOM_SPEED}
    assert handlers.speed_preset_steps(CUSTOM_SPEED) == {}  # "custom" leaves Steps alone
    assert handlers.speed_preset_steps(draft.label) == {"steps": draft.steps}
    assert handlers._speed_for(draft.steps, draft.first_block_cache) == draft.label
    assert handlers._speed_for(draft.steps, 0.0) == CUSTOM_SPEED


def test_presets_and_defaults_come_from_dynamictrl():
    """The page's sizes, speeds and defaults are dynamictrl's (presets, GenerateSettings),
    never numbers written again in ui/; sizes read width x height."""
    import re

    from dynamictrl import presets
    from dynamictrl.studio import GenerateSettings
    from ui.handlers import DEFAULT_SIZE, DEFAULT_SPEED, SIZE_PRESETS, SPEED_PRESETS, AppConfig

    assert SIZE_PRESETS["Portrait draft 576x1024"] == (576, 1024)
    for label, (width, height) in SIZE_PRESETS.items():
        assert f"{width}x{height}" in label
    assert SIZE_PRESETS[DEFAULT_SIZE] == (GenerateSettings.width, GenerateSettings.height)
    defaults = GenerateSettings(prompt="")
    assert SPEED_PRESETS[DEFAULT_SPEED] == (defaults.steps, defaults.memory.first_block_cache)
    assert [label for label in SPEED_PRESETS] == [preset.label for preset in presets.SPEED_PRESETS]
    config = AppConfig(outputs_dir=ROOT, work_dir=ROOT)
    assert (config.default_frames, config.default_steps) == (GenerateSettings.num_frames, GenerateSettings.steps)
    for path in (ROOT / "ui").glob("*.py"):
        sizes = re.findall(r"\b(?:576|768|1024|1360)\b", path.read_text())
        assert not sizes, f"{path.name} writes preset sizes again: {sizes}"


def fake_studio(tmp_path, missing=()):
    """A studio with what the handlers call before any model runs."""
    from types import SimpleNamespace

    from dynamictrl import catalog

    return SimpleNamespace(
        extract_poses=None,
        mask=None,
        caption=None,
        lipsync=None,
        limits=None,
        weights_dir=tmp_path / "weights",
        missing_models=lambda settings, **job: catalog.statuses(tmp_path / "weights", missing),
    )


def test_mask_buttons_only_preview_and_generate_shows_the_transformer():
    from ui.handlers import Handlers, mask_status_text

    assert "DynamiCtrl (base)" in mask_status_text("none", []) and "Mask:** none" in mask_status_text("none", [])
    assert "Mask_B01" in mask_status_text("background", []) and "person box" in mask_status_text("background", [])
    assert "Mask_C01" in mask_status_text("clothing", [[1, 2, 1]]) and "1 click" in mask_status_text(
        "clothing", [[1, 2, 1]]
    )
    used = Handlers.use_mask("clothing", [[3, 4, 1]])
    assert used["mask_mode"] == "clothing" and used["mask_points"] == [[3, 4, 1]] and "Mask_C01" in used["mask_status"]
    assert Handlers.no_mask()["mask_mode"] == "none"
    import gradio as gr
    import pytest

    with pytest.raises(gr.Error, match="Preview a Background or Clothing"):
        Handlers.use_mask("none", [])  # the person check blacks out nothing
    # The mask starts and clicks return the preview only: Generate's mask is not among them
    from ui.layout import MASK_VIEW

    assert "mask_mode" not in MASK_VIEW and "mask_points" not in MASK_VIEW


def test_a_job_with_missing_models_gets_one_message_and_does_not_start(tmp_path):
    from ui.handlers import AppConfig, Handlers

    studio = fake_studio(tmp_path, missing=("mask_background", "dwpose"))
    studio.generate = lambda *args, **kwargs: pytest.fail("the job started")
    (image := tmp_path / "reference.png").write_bytes(b"")
    (video := tmp_path / "dance.mp4").write_bytes(b"")
    handlers = Handlers(studio, AppConfig(outputs_dir=tmp_path / "out", work_dir=tmp_path / "work"))
    handlers.config.size_presets = {"tiny": (64, 80)}
    shown = handlers.generate(
        reference=str(image),
        driving=str(video),
        is_pose_video=False,
        size_preset="tiny",
        width=0,
        height=0,
        start=0,
        frames=9,
        fps=16,
        retarget="global",
        mask_mode="background",
        mask_points=[],
        prompt="a dancer",
        negative_prompt="",
        steps=2,
        guidance=3.0,
        seed=7,
        speed="custom",
        offload="auto",
        pose_state={},
        request=None,
        progress=lambda *args, **kwargs: None,
    )
    message = shown["missing_models"]["value"]
    assert "DynamiCtrl Mask_B01 (11.5 GB)" in message and "DWPose (351.0 MB)" in message
    assert "python -m dynamictrl download mask_background dwpose" in message
    assert shown["missing_names"] == ["mask_background", "dwpose"]
    assert shown["download_missing"]["visible"] and "11.9 GB" in shown["download_missing"]["value"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_offline_download_says_what_to_run_and_logs_one_line(tmp_path, monkeypatch, caplog):
    import logging

    import gradio as gr

    from ui.handlers import AppConfig, Handlers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    handlers = Handlers(fake_studio(tmp_path), AppConfig(outputs_dir=tmp_path / "out", work_dir=tmp_path / "work"))
    with caplog.at_level(logging.DEBUG, logger="ui.handlers"), pytest.raises(gr.Error) as error:
        handlers.download_model("whisper_tiny", request=None, progress=lambda *args, **kwargs: None)
    assert "python -m dynamictrl download whisper_tiny" in error.value.message
    assert "Traceback" not in error.value.message
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line; the traceback only at DEBUG
    # Downloads are an admin action
    handlers.config.admin_actions = False
    with pytest.raises(gr.Error, match="admin action"):
        handlers.download_model("whisper_tiny", request=None, progress=lambda *args, **kwargs: None)


def test_reuse_refuses_a_malformed_manifest_with_one_message():
    import gradio as gr

    from ui.handlers import manifest_settings

    good = {
        "output": "a_seed1.mp4",
        "settings": {
            "prompt": "p",
            "num_frames": 9,
            "width": 64,
            "height": 80,
            "steps": 2,
            "seed": 1,
            "guidance": 3.0,
            "fps": 16.0,
        },
    }
    assert manifest_settings(good).width == 64
    for broken, reason in (
        ({**good, "settings": {**good["settings"], "width": "wide"}}, "bad width"),
        ({**good, "settings": "nope"}, "no settings"),
        ({**good, "output": "../../etc/passwd.mp4"}, "no output video name"),
        ({**good, "settings": {**good["settings"], "mask_points": [[1, 2]]}}, "bad mask_points"),
        ({**good, "settings": {**good["settings"], "num_frames": 10}}, "4k+1"),
    ):
        with pytest.raises(gr.Error) as error:
            manifest_settings(broken)
        assert "is malformed" in error.value.message and reason in error.value.message, error.value.message


def test_history_rows_are_in_the_page_time_zone():
    from ui.handlers import _history_row, _local_time

    assert _local_time("2025-06-01T12:00:00+00:00", "Asia/Tokyo") == "2025-06-01 21:00"
    assert _local_time("2025-06-01T12:00:00+00:00", None) == "2025-06-01 12:00"
    assert _local_time("garbage", "Asia/Tokyo") == ""
    entry = {
        "output": "x.mp4",
        "created": "2025-06-01T12:00:00+00:00",
        "prompt_used": "a dancer",
        "settings": {
            "width": 64,
            "height": 80,
            "num_frames": 33,
            "fps": 16.0,
            "seed": 5,
            "steps": 2,
            "mask_mode": "background",
        },
    }
    assert _history_row(entry, "Europe/Paris") == [
        "2025-06-01 14:00",
        "a dancer",
        "64x80",
        33,
        "2.1 s",
        5,
        2,
        "DynamiCtrl Mask_B01",
        "x.mp4",
    ]


def test_one_cancel_stops_the_rest_of_a_variations_batch(tmp_path):
    """Variations are one queue job per seed: after a Cancel the seeds not yet started return
    at once without running, and a new batch runs again."""
    from ui.handlers import AppConfig, Handlers

    studio = fake_studio(tmp_path)
    studio.generate = lambda *args, **kwargs: pytest.fail("a cancelled batch ran a seed")
    handlers = Handlers(studio, AppConfig(outputs_dir=tmp_path / "out", work_dir=tmp_path / "work"))
    handlers.arm_variations(3, 40, request=None)
    assert handlers._batches["default"]["seeds"] == [40, 41, 42]
    handlers.cancel(request=None)
    assert (
        handlers.variation(
            1,
            **{name: None for name in ("reference", "driving")},
            is_pose_video=False,
            size_preset="tiny",
            width=0,
            height=0,
            start=0,
            frames=9,
            fps=16,
            retarget="global",
            mask_mode="none",
            mask_points=[],
            prompt="p",
            negative_prompt="",
            steps=2,
            guidance=3.0,
            seed=40,
            speed="custom",
            offload="auto",
            pose_state={},
            request=None,
            progress=lambda *a, **k: None,
        )
        == {}
    )
    import gradio as gr

    with pytest.raises(gr.Error, match="1 to 8"):
        handlers.arm_variations(9, 40, request=None)


def test_speed_presets_show_their_estimated_gpu_time_for_the_size_and_length(tmp_path):
    """Issue #18 item 7: each speed preset is labelled with its estimated time on a GPU
    (`presets.estimate_gpu_seconds`), for the size and length on the page; custom Steps too."""
    from dynamictrl import presets
    from ui.handlers import CUSTOM_SPEED, SIZE_PRESETS, AppConfig, Handlers

    class NoStudio:  # the estimate needs no model
        extract_poses = mask = caption = lipsync = generate = None

    handlers = Handlers(NoStudio(), AppConfig(outputs_dir=tmp_path / "out", work_dir=tmp_path / "work"))
    portrait = next(label for label, size in SIZE_PRESETS.items() if size == (768, 1360))
    draft_size = next(label for label, size in SIZE_PRESETS.items() if size == (576, 1024))
    quality, draft = presets.SPEED_PRESETS
    text = handlers.speed_estimate(portrait, None, None, 37, 25, quality.label, 3.0)["speed_estimate"]
    assert text.startswith("Estimated for 768x1360, 37 frames: ")
    for preset in (quality, draft):
        seconds = presets.estimate_gpu_seconds(768, 1360, 37, preset.steps, 3.0, preset.first_block_cache)
        assert f"{preset.label.split(':')[0]} {presets.time_label(seconds)}" in text
    # A smaller size is estimated as faster; a custom Steps count gets its own entry.
    small = handlers.speed_estimate(draft_size, None, None, 37, 25, quality.label, 3.0)["speed_estimate"]
    assert "576x1024" in small and small != text
    custom = handlers.speed_estimate(portrait, None, None, 37, 60, CUSTOM_SPEED, 3.0)["speed_estimate"]
    seconds = presets.estimate_gpu_seconds(768, 1360, 37, 60, 3.0, 0.0)
    assert f"Custom {presets.time_label(seconds)}" in custom
    # While a field is being typed there is nothing to estimate (no error toast for a hint).
    assert handlers.speed_estimate(presets.CUSTOM, "", 1360, 37, 25, quality.label, 3.0) == {"speed_estimate": ""}
