import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dynamictrl.video import read_video, write_video

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    environment = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "dynamictrl", *args], capture_output=True, text=True, cwd=ROOT, env=environment, timeout=300
    )


def test_generate_end_to_end_writes_playable_mp4_and_manifest(tiny_weights, tmp_path):
    rng = np.random.default_rng(1)
    image = tmp_path / "ref.png"
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(image)
    pose = write_video(tmp_path / "pose.mp4", rng.integers(0, 255, (9, 64, 48, 3), dtype=np.uint8))
    out = tmp_path / "out" / "dance.mp4"

    result = run_cli(
        "generate", "--image", str(image), "--pose-video", str(pose), "--prompt", "a person dancing",
        "--out", str(out), "--frames", "9", "--width", "48", "--height", "64", "--steps", "2",
        "--seed", "5", "--weights-dir", str(tiny_weights), "--device", "cpu",
    )

    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout
    assert "2/2" in result.stderr  # the denoising progress bar
    video = read_video(out)
    assert video.num_frames == 9 and video.size == (64, 48)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["settings"]["steps"] == 2 and manifest["settings"]["seed"] == 5
    assert manifest["inputs"]["image"]["path"] == str(image)


def test_bad_input_exits_2_with_one_clear_line(tiny_weights, tmp_path):
    image = tmp_path / "ref.png"
    Image.new("RGB", (48, 64)).save(image)
    pose = write_video(tmp_path / "pose.mp4", np.zeros((9, 64, 48, 3), dtype=np.uint8))
    result = run_cli(
        "generate", "--image", str(image), "--pose-video", str(pose), "--prompt", "x", "--out",
        str(tmp_path / "o.mp4"), "--frames", "9", "--width", "50", "--height", "64", "--weights-dir", str(tiny_weights),
        "--device", "cpu",
    )
    assert result.returncode == 2
    assert "multiples of 16" in result.stderr and "Traceback" not in result.stderr


def test_missing_weights_offline_names_the_download_command(tmp_path):
    image = tmp_path / "ref.png"
    Image.new("RGB", (48, 64)).save(image)
    pose = write_video(tmp_path / "pose.mp4", np.zeros((9, 64, 48, 3), dtype=np.uint8))
    result = run_cli(
        "generate", "--image", str(image), "--pose-video", str(pose), "--prompt", "x", "--out",
        str(tmp_path / "o.mp4"), "--frames", "9", "--width", "48", "--height", "64",
        "--weights-dir", str(tmp_path / "empty"), "--variant", "mask_background", "--device", "cpu",
    )
    assert result.returncode == 2
    assert "python -m dynamictrl download" in result.stderr


def test_download_offline_fails_clearly(tmp_path):
    result = run_cli("download", "--weights-dir", str(tmp_path))
    assert result.returncode == 2
    assert "gulucaptain/DynamiCtrl" in result.stderr and "Traceback" not in result.stderr
