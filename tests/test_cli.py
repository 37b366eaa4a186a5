import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamictrl import cli
from dynamictrl.video import read_video, write_video
from tests import background

ROOT = Path(__file__).resolve().parents[1]


def cli_here(capsys, *args) -> subprocess.CompletedProcess:
    """The same `main` as `python -m dynamictrl ...`, in this interpreter: what it prints
    and its exit status, without a fresh interpreter's imports. The end-to-end test and
    the import checks below still start real processes."""
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["dynamictrl", *args], code, captured.out, captured.err)


def start_end_to_end(getfixturevalue):
    """`python -m dynamictrl generate` in a fresh interpreter, started early (tests/background.py)."""
    weights, folder = getfixturevalue("tiny_weights"), end_to_end_folder(getfixturevalue)
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(folder / "ref.png")
    write_video(folder / "pose.mp4", rng.integers(0, 255, (9, 64, 48, 3), dtype=np.uint8))
    arguments = [
        "generate",
        "--image",
        str(folder / "ref.png"),
        "--pose-video",
        str(folder / "pose.mp4"),
        "--prompt",
        "a person dancing",
        "--out",
        str(folder / "out" / "dance.mp4"),
        "--frames",
        "9",
        "--width",
        "48",
        "--height",
        "64",
        "--steps",
        "2",
        "--seed",
        "5",
        "--weights-dir",
        str(weights),
        "--device",
        "cpu",
        "--t5-on-cpu",
    ]
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    return lambda: background.Run([sys.executable, "-m", "dynamictrl", *arguments], cwd=ROOT, env=environment)


def end_to_end_folder(getfixturevalue) -> Path:
    return getfixturevalue("tmp_path_factory").getbasetemp() / "cli_end_to_end"


@pytest.mark.slow  # a fresh interpreter
def test_generate_end_to_end_writes_playable_mp4_and_manifest(request):
    result = background.result("cli end to end", request.getfixturevalue).wait()
    folder = end_to_end_folder(request.getfixturevalue)
    image, out = folder / "ref.png", folder / "out" / "dance.mp4"

    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout
    assert "2/2" in result.stderr  # the denoising progress bar
    video = read_video(out)
    assert video.num_frames == 9 and video.size == (64, 48)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert (
        manifest["settings"]["steps"] == 2
        and manifest["settings"]["seed"] == 5
        and manifest["settings"]["memory"]["t5_on_cpu"]
    )
    assert manifest["inputs"]["image"]["path"] == str(image)


def test_bad_input_exits_2_with_one_clear_line(tiny_weights, tmp_path, capsys):
    image = tmp_path / "ref.png"
    Image.new("RGB", (48, 64)).save(image)
    pose = write_video(tmp_path / "pose.mp4", np.zeros((9, 64, 48, 3), dtype=np.uint8))
    result = cli_here(
        capsys,
        "generate",
        "--image",
        str(image),
        "--pose-video",
        str(pose),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o.mp4"),
        "--frames",
        "9",
        "--width",
        "50",
        "--height",
        "64",
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert result.returncode == 2
    assert "multiples of 16" in result.stderr and "Traceback" not in result.stderr


def test_missing_weights_offline_names_the_download_command(tmp_path, capsys):
    image = tmp_path / "ref.png"
    Image.new("RGB", (48, 64)).save(image)
    pose = write_video(tmp_path / "pose.mp4", np.zeros((9, 64, 48, 3), dtype=np.uint8))
    result = cli_here(
        capsys,
        "generate",
        "--image",
        str(image),
        "--pose-video",
        str(pose),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o.mp4"),
        "--frames",
        "9",
        "--width",
        "48",
        "--height",
        "64",
        "--weights-dir",
        str(tmp_path / "empty"),
        "--variant",
        "mask_background",
        "--device",
        "cpu",
    )
    assert result.returncode == 2
    assert "python -m dynamictrl download" in result.stderr


def test_download_offline_fails_clearly(tmp_path, capsys):
    result = cli_here(capsys, "download", "--weights-dir", str(tmp_path))
    assert result.returncode == 2
    assert "download base --weights-dir weights" in result.stderr and "Traceback" not in result.stderr
    assert "copy DynamiCtrl from its weights/ folder" in result.stderr


def uniform_video(path, colors, height=240, width=320, fps=16):
    frames = np.stack([np.broadcast_to(np.array(c, np.uint8), (height, width, 3)) for c in colors])
    return write_video(path, frames, fps=fps)


def test_pose_command_writes_pose_video_preview_and_json(tiny_weights, tmp_path, capsys):
    image = tmp_path / "ref.png"
    Image.new("RGB", (360, 480), (255, 0, 0)).save(image)  # the tiny detector sees people in red
    dance = uniform_video(tmp_path / "dance.mov", [(255, 8 * k, 0) for k in range(20)])
    out = tmp_path / "pose.mp4"

    result = cli_here(
        capsys,
        "pose",
        "--image",
        str(image),
        "--video",
        str(dance),
        "--out",
        str(out),
        "--frames",
        "9",
        "--width",
        "48",
        "--height",
        "64",
        "--fps",
        "8",
        "--retarget",
        "bones",
        "--preview",
        str(tmp_path / "preview.mp4"),
        "--save-json",
        str(tmp_path / "poses.json"),
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )

    assert result.returncode == 0, result.stderr
    pose = read_video(out)
    assert pose.num_frames == 9 and pose.size == (64, 48) and pose.fps == 8
    assert read_video(tmp_path / "preview.mp4").num_frames == 9
    from dynamictrl.pose.types import load_poses

    frames, metadata = load_poses(tmp_path / "poses.json")
    assert len(frames) == 9 and metadata["settings"]["retarget"] == "bones"
    assert len(metadata["driving_detections"]) == 8


def test_pose_command_explains_a_too_short_video(tiny_weights, tmp_path, capsys):
    image = tmp_path / "ref.png"
    Image.new("RGB", (48, 64), (255, 0, 0)).save(image)
    dance = uniform_video(tmp_path / "short.mp4", [(255, 0, 0)] * 5)
    result = cli_here(
        capsys,
        "pose",
        "--image",
        str(image),
        "--video",
        str(dance),
        "--out",
        str(tmp_path / "p.mp4"),
        "--frames",
        "37",
        "--width",
        "48",
        "--height",
        "64",
        "--weights-dir",
        str(tiny_weights),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "use --frames 5 or --loop" in result.stderr


def test_generate_from_a_driving_video(tiny_weights, tmp_path, capsys):
    image = tmp_path / "ref.png"
    Image.new("RGB", (360, 480), (255, 0, 0)).save(image)
    dance = uniform_video(tmp_path / "dance.mp4", [(255, 8 * k, 0) for k in range(8)])
    out = tmp_path / "anim.mp4"
    result = cli_here(
        capsys,
        "generate",
        "--image",
        str(image),
        "--driving-video",
        str(dance),
        "--prompt",
        "a person dancing",
        "--out",
        str(out),
        "--frames",
        "5",
        "--width",
        "48",
        "--height",
        "64",
        "--steps",
        "1",
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert read_video(out).num_frames == 5
    assert read_video(tmp_path / "anim_pose.mp4").num_frames == 5
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["inputs"]["pose_extraction"]["settings"]["retarget"] == "global"
    assert manifest["inputs"]["pose_extraction"]["filled_frames"] == 0


def test_caption_command_prints_an_editable_caption(tiny_weights, tmp_path, capsys):
    from dynamictrl.testing.qwen import save_tiny_qwen

    if not (tiny_weights / "Qwen2-VL-2B-Instruct").exists():
        save_tiny_qwen(tiny_weights)
    image = tmp_path / "ref.png"
    Image.new("RGB", (64, 64), (200, 100, 50)).save(image)
    result = cli_here(
        capsys,
        "caption",
        "--image",
        str(image),
        "--mask-mode",
        "background",
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "[Describe the new background here.]" in result.stdout


def test_mask_command_writes_the_masked_reference(tiny_weights, tmp_path, monkeypatch, capsys):
    """In process, with the tiny SAM registered where the real checkpoint would load."""
    from dynamictrl import cli, weights
    from dynamictrl.segment import Segmenter
    from dynamictrl.testing.sam import build_tiny_sam

    def register_tiny(manager, kind, weights_dir=None):
        manager.register(f"sam.{kind}", lambda: Segmenter(build_tiny_sam(), device="cpu"))

    monkeypatch.setattr("dynamictrl.studio.register_segmenter", register_tiny)
    # A weights folder where the checkpoint is on disk (a sparse file of the official size,
    # so the studio's missing-models check passes); the tiny SAM loads in its place.
    folder = tmp_path / "weights"
    (folder / "sam").mkdir(parents=True)
    (folder / "DWPose").symlink_to(tiny_weights / "DWPose")
    with open(folder / "sam" / "sam_vit_b_01ec64.pth", "wb") as checkpoint:
        checkpoint.truncate(weights.SAM_CHECKPOINTS["vit_b"].size)
    image = tmp_path / "ref.png"
    Image.new("RGB", (360, 480), (255, 0, 0)).save(image)
    out, mask = tmp_path / "masked.png", tmp_path / "mask.png"
    code = cli.main(
        [
            "mask",
            "--image",
            str(image),
            "--mode",
            "background",
            "--out",
            str(out),
            "--save-mask",
            str(mask),
            "--width",
            "48",
            "--height",
            "64",
            "--points",
            "24,30,+",
            "--weights-dir",
            str(folder),
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and "--mask-mode background" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (64, 48, 3)
    assert set(np.unique(np.asarray(Image.open(mask)))) <= {0, 255}


def test_bad_points_are_explained():
    from dynamictrl.cli import main, parse_point

    assert parse_point("10,20,+") == (10.0, 20.0, 1) and parse_point("1.5,2,-") == (1.5, 2.0, 0)
    assert main(["mask", "--image", "x.png", "--mode", "clothing", "--out", "o.png", "--points", "10,20"]) == 2


def test_missing_sam_checkpoint_offline_names_how_to_get_it(tiny_weights, tmp_path, capsys):
    image = tmp_path / "ref.png"
    Image.new("RGB", (360, 480), (255, 0, 0)).save(image)
    result = cli_here(
        capsys,
        "mask",
        "--image",
        str(image),
        "--mode",
        "background",
        "--out",
        str(tmp_path / "m.png"),
        "--width",
        "48",
        "--height",
        "64",
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "SAM ViT-B (375.0 MB)" in result.stderr and "python -m dynamictrl download sam_vit_b" in result.stderr


def test_duration_rounds_to_4k_plus_1():
    from dynamictrl.cli import frames_for_duration

    assert frames_for_duration(10, 16) == 161
    assert frames_for_duration(2.3, 16) == 37
    assert frames_for_duration(0.1, 16) == 5
    assert all((frames_for_duration(s, 16) - 1) % 4 == 0 for s in (0.5, 1, 3.3, 60))


def test_generate_a_clip_longer_than_one_window(tiny_weights, tmp_path, capsys):
    rng = np.random.default_rng(2)
    image = tmp_path / "ref.png"
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(image)
    pose = write_video(tmp_path / "pose.mp4", rng.integers(0, 255, (21, 64, 48, 3), dtype=np.uint8))
    out = tmp_path / "long.mp4"
    result = cli_here(
        capsys,
        "generate",
        "--image",
        str(image),
        "--pose-video",
        str(pose),
        "--prompt",
        "a person dancing",
        "--out",
        str(out),
        "--frames",
        "21",
        "--window-frames",
        "9",
        "--overlap",
        "1",
        "--width",
        "48",
        "--height",
        "64",
        "--steps",
        "1",
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert read_video(out).num_frames == 21
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["settings"]["window_frames"] == 9 and manifest["settings"]["overlap"] == 1


def test_lipsync_command(lipsync_weights, tmp_path, capsys):
    from scipy.io import wavfile

    frames = np.random.default_rng(3).integers(0, 255, (5, 240, 320, 3), dtype=np.uint8)
    frames[:, :16, :16] = (255, 0, 0)  # the tiny DWPose finds people (dynamictrl/testing/onnx.py)
    video = write_video(tmp_path / "talk.mp4", frames, fps=25)
    t = np.arange(6400) / 16000
    wavfile.write(tmp_path / "speech.wav", 16000, (9000 * np.sin(2 * np.pi * 180 * t)).astype(np.int16))
    out = tmp_path / "synced.mp4"
    common = ["--weights-dir", str(lipsync_weights), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]

    result = cli_here(
        capsys,
        "lipsync",
        "--video",
        str(video),
        "--audio",
        str(tmp_path / "speech.wav"),
        "--out",
        str(out),
        "--bbox-shift",
        "2",
        "--batch-size",
        "4",
        *common,
    )
    assert result.returncode == 0, result.stderr
    assert "10 frames at 25 fps" in result.stdout and "forward and backward" in result.stdout
    assert "lip-sync" in result.stderr  # the progress bar
    assert read_video(out).num_frames == 10
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["bbox_shift"] == 2

    wavfile.write(tmp_path / "silence.wav", 16000, np.zeros(8000, np.int16))
    failed = cli_here(
        capsys, "lipsync", "--video", str(video), "--audio", str(tmp_path / "silence.wav"), "--out", str(out), *common
    )
    assert failed.returncode == 2 and "silent" in failed.stderr and "Traceback" not in failed.stderr


def test_prepare_data_is_a_command(tmp_path, capsys):
    result = cli_here(
        capsys,
        "prepare-data",
        "--videos",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "dataset"),
        "--no-caption",
    )
    assert result.returncode == 2 and "missing" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_is_a_command(tmp_path, capsys):
    result = cli_here(capsys, "evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path / "nope2"))
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


def test_train_is_a_command(tmp_path, capsys):
    result = cli_here(capsys, "train", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "missing.yaml" in result.stderr and "Traceback" not in result.stderr


def imported_modules(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Runs the CLI under `python -X importtime` and returns the modules it imported."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dynamictrl", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=120,
    )
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, modules


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    result, modules = imported_modules("--help")
    assert result.returncode == 0 and "generate" in result.stdout and "models" in result.stdout
    assert "torch" not in modules and "diffusers" not in modules and "dynamictrl.cli" in modules
    result, modules = imported_modules("generate", "--image", "x.png")  # --out and the motion are missing
    assert result.returncode == 2 and "required" in result.stderr
    assert "torch" not in modules
    result, modules = imported_modules("generate", "--help")
    assert result.returncode == 0 and "--pose-strength" in result.stdout and "torch" not in modules
    result, modules = imported_modules("models", "--weights-dir", str(tmp_path))
    assert result.returncode == 0 and "missing" in result.stdout and "torch" not in modules


def test_user_errors_are_one_line_and_the_traceback_needs_debug(tmp_path, capsys):
    result = cli_here(capsys, "download", "dwpose", "--weights-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Cannot download here: offline mode is on")
    assert "python -m dynamictrl download dwpose --weights-dir weights" in lines[0]
    debug = cli_here(capsys, "--debug", "download", "dwpose", "--weights-dir", str(tmp_path))
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_models_command_lists_every_model_with_its_state(tiny_weights, capsys):
    result = cli_here(capsys, "models", "--weights-dir", str(tiny_weights), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["base"]["state"] == "on disk" and rows["sam_vit_h"]["state"] == "missing"
    assert rows["qwen2vl_7b"]["to download"] == "16.6 GB"
    assert set(rows) >= {
        "base",
        "mask_background",
        "mask_clothing",
        "dwpose",
        "sam_vit_b",
        "qwen2vl_2b",
        "qwen2vl_7b",
        "musetalk",
        "sd_vae",
        "whisper_tiny",
        "face_parsing",
    }


def test_variations_with_presets_and_preview_frames(tiny_weights, tmp_path, capsys):
    rng = np.random.default_rng(4)
    image = tmp_path / "ref.png"
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(image)
    pose = write_video(tmp_path / "pose.mp4", rng.integers(0, 255, (9, 64, 48, 3), dtype=np.uint8))
    out = tmp_path / "dance.mp4"
    result = cli_here(
        capsys,
        "generate",
        "--image",
        str(image),
        "--pose-video",
        str(pose),
        "--prompt",
        "a person dancing",
        "--out",
        str(out),
        "--frames",
        "9",
        "--width",
        "48",
        "--height",
        "64",
        "--speed",
        "draft",
        "--steps",
        "2",
        "--seeds",
        "3,9",
        "--preview-every",
        "1",
        "--pose-strength",
        "0.5",
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    for seed in (3, 9):
        manifest = json.loads((tmp_path / f"dance_seed{seed}.json").read_text())
        assert manifest["settings"]["seed"] == seed and manifest["settings"]["steps"] == 2
        assert (
            manifest["settings"]["memory"]["first_block_cache"] == 0.05 and manifest["settings"]["pose_strength"] == 0.5
        )
        assert read_video(tmp_path / f"dance_seed{seed}.mp4").num_frames == 9
    assert not out.exists()
    previews = sorted((tmp_path / "dance_preview").glob("step_*.png"))
    assert [p.name for p in previews] == ["step_001.png", "step_002.png"]  # the second seed's overwrite the first's
    assert Image.open(previews[0]).size == (6 * 3, 8)  # 3 latent frames of 48/8 x 64/8 side by side


def test_bad_seed_and_size_options_are_one_line(tmp_path, capsys):
    generate = ["generate", "--image", "x.png", "--pose-video", "p.mp4", "--out", str(tmp_path / "o.mp4")]
    result = cli_here(capsys, *generate, "--seeds", "1,1")
    assert result.returncode == 2 and "Each seed once" in result.stderr and "Traceback" not in result.stderr
    result = cli_here(capsys, *generate, "--size", "portrait-draft", "--width", "512")
    assert result.returncode == 2 and "either --size or --width/--height" in result.stderr


background.early(
    "cli end to end", start_end_to_end, __file__, ("test_generate_end_to_end_writes_playable_mp4_and_manifest",)
)
