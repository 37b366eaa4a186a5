"""One settings model (`dynamictrl/settings.py`) and one home per rule
(`dynamictrl/validation.py`): the CLI, the app's widgets and the Ray job schema show the
defaults, ranges and choices of the settings' field metadata, and a rule refuses a value
with the same message from every entry point."""

import re
import subprocess
import sys
import typing
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path

import pytest

from dynamictrl.limits import Limits
from dynamictrl.settings import (
    GenerateSettings,
    PipelineOptions,
    PoseSettings,
    field_default,
    settings_from_dict,
    widget_spec,
)

ROOT = Path(__file__).resolve().parents[1]
FRAMES_36 = "must be 4k+1 (…, 33, 37, 41, …); got 36: use 33 or 37."


def flagged_fields(cls):
    """(field, owner class) of every field with a CLI flag, nested option objects included."""
    for item in fields(cls):
        if is_dataclass(item.default_factory):
            yield from flagged_fields(item.default_factory)
        elif "flag" in item.metadata:
            yield item, cls


def test_every_field_has_help_and_every_default_is_in_its_own_range():
    from dynamictrl.lipsync.settings import LipSyncSettings

    for cls in (GenerateSettings, PoseSettings, PipelineOptions, LipSyncSettings):
        for item in fields(cls):
            assert item.metadata.get("help"), f"{cls.__name__}.{item.name} has no help"
            spec = widget_spec(item.name, cls)
            if spec.choices is not None and spec.default is not None:
                assert spec.default in spec.choices
            if spec.minimum is not None and isinstance(spec.default, (int, float)):
                assert spec.minimum <= spec.default <= (spec.maximum if spec.maximum is not None else spec.default)
    # The defaults pass every rule (the official setting is a valid job).
    from dynamictrl.validation import check_generate_settings, check_pose_settings

    check_generate_settings(GenerateSettings(prompt="a dancer"), Limits())
    check_pose_settings(PoseSettings(), Limits())


def test_cli_arguments_are_the_settings_fields():
    from dynamictrl.cli import PRESET_FLAGS, build_parser, settings_from_args, size_and_speed

    args = build_parser(["generate"]).parse_args(
        ["generate", "--image", "a.png", "--pose-video", "p.mp4", "--out", "o.mp4"]
    )
    parser = build_parser(["generate"])._subparsers._group_actions[0].choices["generate"]
    actions = {action.dest: action for action in parser._actions}
    for item, _cls in flagged_fields(GenerateSettings):
        action = actions[item.name]
        assert item.metadata["flag"] in action.option_strings
        if item.metadata.get("choices"):
            assert tuple(action.choices) == tuple(item.metadata["choices"]), item.name
        if item.name in PRESET_FLAGS:
            assert action.default is None  # resolved from the preset, then the field's default
        elif item.default is not MISSING:
            assert getattr(args, item.name) == item.default, item.name

    def generate_settings(args):  # as `run_generate`: the preset fields resolved first
        width, height, steps, cache = size_and_speed(args, GenerateSettings(prompt=""))
        return settings_from_args(
            GenerateSettings, args, width=width, height=height, steps=steps, first_block_cache=cache
        )

    assert generate_settings(args) == GenerateSettings(prompt="")  # nothing on the command line: every default

    pose_args = build_parser(["pose"]).parse_args(["pose", "--image", "a.png", "--video", "d.mp4", "--out", "o.mp4"])
    assert settings_from_args(PoseSettings, pose_args) == PoseSettings()
    flags = build_parser(["generate"]).parse_args(
        [
            "generate",
            "--image",
            "a.png",
            "--pose-video",
            "p.mp4",
            "--out",
            "o.mp4",
            "--frames",
            "41",
            "--offload",
            "model",
            "--pab",
            "--no-color-match",
            "--fill",
            "a beach",
            "--start",
            "1.5",
        ]
    )
    settings = generate_settings(flags)
    assert (
        settings.num_frames,
        settings.memory.offload,
        settings.memory.pyramid_attention_broadcast,
        settings.color_match,
        settings.mask_fill,
    ) == (41, "model", True, False, "a beach")
    assert settings_from_args(PoseSettings, flags).start_s == 1.5
    from dynamictrl.lipsync.settings import LipSyncSettings

    lip_args = build_parser(["lipsync"]).parse_args(
        ["lipsync", "--video", "v.mp4", "--audio", "a.wav", "--out", "o.mp4", "--left-cheek-width", "70"]
    )
    assert settings_from_args(LipSyncSettings, lip_args) == LipSyncSettings(left_cheek_width=70)


def test_help_of_generate_is_fast_and_does_not_import_torch():
    code = (
        "import sys\nfrom dynamictrl.cli import build_parser\n"
        "build_parser(['generate', 'pose'])\nprint(sorted({'torch', 'numpy', 'PIL'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_job_schema_fields_are_the_settings_fields():
    from dynamictrl.lipsync.settings import LipSyncSettings
    from dynamictrl.serve.schema import settings_model

    for cls in (GenerateSettings, PoseSettings, PipelineOptions, LipSyncSettings):
        model = settings_model(cls)
        schema = model.model_json_schema()
        for item in fields(cls):
            model_field = model.model_fields[item.name]
            constraints = {type(c).__name__: c for c in model_field.metadata}
            meta = item.metadata
            if item.default is not MISSING:
                assert model_field.default == item.default, item.name
            assert model_field.description == meta["help"]
            assert (constraints["Ge"].ge if "Ge" in constraints else None) == meta.get("min"), item.name
            assert (constraints["Le"].le if "Le" in constraints else None) == meta.get("max"), item.name
            if meta.get("choices"):
                annotation = model_field.annotation
                if typing.get_origin(annotation) is not typing.Literal:  # Optional: Literal[...] | None
                    annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
                assert typing.get_args(annotation) == tuple(meta["choices"]), item.name
        if cls is GenerateSettings:
            assert schema["properties"]["steps"]["maximum"] == widget_spec("steps").maximum
            assert "memory" in schema["properties"]


def test_app_widgets_show_the_settings(tmp_path):
    import app

    blocks, config, _ = app.build(app.parse_args(["--outputs", str(tmp_path / "out")]), tmp_path / "work")
    props = {}
    for component in blocks.get_config_file()["components"]:
        p = component.get("props", {})
        props[p.get("elem_id") or p.get("label")] = p
    expected = {
        "steps": widget_spec("steps"),
        "Guidance": widget_spec("guidance"),
        "Width (multiple of 16)": widget_spec("width"),
        "Height (multiple of 16)": widget_spec("height"),
        "frames": widget_spec("num_frames", PoseSettings),
        "fps (0 = every frame)": widget_spec("fps", PoseSettings),
        "Start (s)": widget_spec("start_s", PoseSettings),
    }
    for key, spec in expected.items():
        widget = props[key]
        assert widget["value"] == spec.default, key
        assert (widget["minimum"], widget.get("maximum")) == (spec.minimum, spec.maximum), key
        if key != "Start (s)" and not key.startswith("fps"):
            assert widget["step"] == spec.step, key
    assert props["seed"]["value"] == widget_spec("seed").default
    for label, spec in (
        ("Offload (memory tier)", widget_spec("offload")),
        ("Retargeting", widget_spec("retarget", PoseSettings)),
    ):
        assert [value for value, _ in props[label]["choices"]] == list(spec.choices), label
        assert props[label]["value"] == spec.default
    from dynamictrl.lipsync.settings import LipSyncSettings

    for label, name in (
        ("Mouth region shift (px; positive opens the mouth more)", "bbox_shift"),
        ("Chin margin (px below the chin in the face crop)", "extra_margin"),
        ("Left cheek width", "left_cheek_width"),
        ("Right cheek width", "right_cheek_width"),
    ):
        spec = widget_spec(name, LipSyncSettings)
        assert (props[label]["value"], props[label]["minimum"], props[label]["maximum"]) == spec[:3], label
    assert (config.default_frames, config.default_steps) == (
        widget_spec("num_frames").default,
        widget_spec("steps").default,
    )


def test_flat_manifests_of_older_versions_still_read():
    from dynamictrl.studio import settings_from_manifest

    flat = {
        "prompt": "a dancer",
        "steps": 30,
        "offload": "model",
        "fp8": True,
        "first_block_cache": 0.05,
        "t5_on_cpu": True,
        "removed_in_a_later_version": 1,
    }
    settings = settings_from_manifest({"settings": flat})
    assert settings.steps == 30 and settings.memory == PipelineOptions(
        offload="model", fp8=True, first_block_cache=0.05, t5_on_cpu=True
    )
    # Today's manifests nest the options; both forms give the same object back.
    assert settings_from_manifest({"settings": asdict(settings)}) == settings
    with pytest.raises(ValueError, match="no setting 'stepz'"):
        settings_from_dict(GenerateSettings, {"prompt": "", "stepz": 3})
    from dynamictrl.serve.schema import settings_from

    # The job schema takes the flat form too (batch files written before the nesting).
    known = {key: value for key, value in flat.items() if key != "removed_in_a_later_version"}
    assert settings_from(GenerateSettings, known, "settings") == settings


def test_the_frames_rule_answers_the_same_everywhere(tiny_weights, tiny_pipe, tmp_path, capsys):
    """4k+1 lives in `validation.check_frames`: Studio, the pipeline, long videos, the job
    schema, the CLI, the app and the training config all refuse 36 frames with its words."""
    import torch

    from dynamictrl.longvideo import plan_windows
    from dynamictrl.serve.schema import JobError, validate_job
    from dynamictrl.studio import Studio
    from dynamictrl.train.config import ConfigError, load_config
    from ui.handlers import Handlers

    studio_message = "The frame count " + FRAMES_36
    with pytest.raises(ValueError) as studio_error:
        Studio(weights_dir=tiny_weights, device="cpu").generate(
            tmp_path / "ref.png",
            tmp_path / "out.mp4",
            GenerateSettings(prompt="a dancer", num_frames=36),
            pose_video_path=tmp_path / "pose.mp4",
        )
    assert str(studio_error.value) == studio_message
    with pytest.raises(ValueError) as pipe_error:
        tiny_pipe(image=None, pose_video=torch.zeros(36, 3, 64, 48), prompt="a dancer", num_frames=36)
    assert str(pipe_error.value) == studio_message
    with pytest.raises(ValueError) as window_error:
        plan_windows(36, 37, 2)
    assert str(window_error.value) == studio_message
    with pytest.raises(JobError) as job_error:
        validate_job(
            {
                "kind": "generate",
                "image": "a.png",
                "pose_video": "p.mp4",
                "out": "o.mp4",
                "settings": {"prompt": "a dancer", "num_frames": 36},
            }
        )
    assert str(job_error.value) == "settings: " + studio_message
    with pytest.raises(ValueError) as app_error:
        Handlers._frames(36)
    assert str(app_error.value) == studio_message
    with pytest.raises(ConfigError) as train_error:
        load_config(overrides=["data.num_frames=36"])
    assert str(train_error.value) == "data.num_frames " + FRAMES_36
    from dynamictrl import cli

    capsys.readouterr()
    code = cli.main(
        [
            "generate",
            "--image",
            str(tmp_path / "ref.png"),
            "--pose-video",
            str(tmp_path / "p.mp4"),
            "--out",
            str(tmp_path / "o.mp4"),
            "--frames",
            "36",
            "--weights-dir",
            str(tiny_weights),
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and studio_message in capsys.readouterr().err


def test_the_ranges_answer_the_same_everywhere():
    """A step count above the ceiling: the check, the job schema and the app's slider all
    take their number from `GenerateSettings.steps`' metadata."""
    from dynamictrl.serve.schema import JobError, validate_job
    from dynamictrl.validation import check_generate_settings, check_setting

    ceiling = widget_spec("steps").maximum
    too_many = GenerateSettings(prompt="a dancer", steps=ceiling + 1)
    with pytest.raises(ValueError, match=rf"steps must be 1\.\.{ceiling}, got {ceiling + 1} \(25 is the official"):
        check_generate_settings(too_many, Limits())
    with pytest.raises(ValueError, match=rf"steps must be 1\.\.{ceiling}"):
        check_setting(GenerateSettings, "steps", ceiling + 1)
    with pytest.raises(JobError, match=rf"settings\.steps: Input should be less than or equal to {ceiling}"):
        validate_job(
            {
                "kind": "generate",
                "image": "a.png",
                "pose_video": "p.mp4",
                "out": "o.mp4",
                "settings": {"prompt": "a dancer", "steps": ceiling + 1},
            }
        )
    check_generate_settings(GenerateSettings(prompt="a dancer", steps=ceiling), Limits())


RULE_PATTERNS = {
    "4k+1 / multiple-of check (x % 4, % 16, % k)": re.compile(r"%\s*(4|16|k|multiple)\b"),
    "a steps / guidance / fps ceiling": re.compile(r"\b(MAX_STEPS|MAX_GUIDANCE|MAX_FPS|MAX_POSE_STRENGTH)\b"),
}


def test_no_entry_point_keeps_its_own_copy_of_a_rule():
    """The rules' arithmetic appears in `dynamictrl/validation.py` only (computing a frame
    count, e.g. `(n - 1) // 4 * 4 + 1`, is not checking one)."""
    sources = [*(ROOT / "dynamictrl").rglob("*.py"), *(ROOT / "ui").rglob("*.py"), ROOT / "app.py"]
    found = []
    for path in sources:
        if path.name == "validation.py" and path.parent.name == "dynamictrl":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in RULE_PATTERNS.items():
                if pattern.search(code) and not re.search(r"[\"'].*%\s*\w.*[\"']", code):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert found == []


def test_each_settings_default_is_written_once():
    """The UI and the CLI take defaults from `widget_spec` / the metadata: no official number
    (37 frames, 25 steps, 768x1360, guidance 3.0) is hard-coded in ui/ beside a widget."""
    layout = (ROOT / "ui" / "layout.py").read_text()
    for widget in re.findall(r"gr\.(?:Slider|Number)\(([^)]*)\)", layout):
        assert not re.search(r"\b(37|25|768|1360|3\.0|100|200)\b", widget), widget
    assert field_default(next(f for f in fields(GenerateSettings) if f.name == "memory")) == PipelineOptions()
