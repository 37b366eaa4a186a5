"""The TikTok runner: dataset discovery, frame alignment, resume, and a real tiny run."""

import argparse
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dynamictrl.eval import cli as eval_cli
from dynamictrl.eval import core as ev
from dynamictrl.eval import tiktok
from dynamictrl.pose.sequence import cover_crop
from dynamictrl.studio import GenerateSettings
from dynamictrl.testing.eval import tiktok_dataset, tiny_models
from dynamictrl.video import read_video, write_video

PROTOCOL = ev.EvalProtocol(size=32, clip_length=4)


class EchoStudio:
    """Stands in for `Studio`: "generates" the driving frames themselves, behind the
    reference, the way the real pipeline orders its output (frame 0 = the reference)."""

    weights_dir = None

    def __init__(self):
        self.calls = []

    def generate(
        self, image_path, out_path, settings, driving_video_path=None, pose_settings=None, return_frames=False
    ):
        self.calls.append(SimpleNamespace(settings=settings, pose_settings=pose_settings))
        reference = np.asarray(Image.open(image_path).convert("RGB"))
        driving = read_video(driving_video_path).frames
        frames = np.stack([cover_crop(f, settings.width, settings.height) for f in [reference, *driving]])
        frames = frames[: settings.num_frames]
        write_video(out_path, frames, fps=settings.fps)
        return SimpleNamespace(frames=frames if return_frames else None, num_frames=len(frames))


def test_finds_the_test_videos_in_every_layout(tmp_path):
    tiktok_dataset(tmp_path / "a", [335, 336])
    (tmp_path / "a" / "00001" / "images").mkdir(parents=True)  # a training video, no frames
    found = tiktok.find_tiktok_videos(tmp_path / "a", (335, 336))
    assert {k: v.path for k, v in found.items()} == {
        335: tmp_path / "a" / "00335" / "images",
        336: tmp_path / "a" / "00336" / "images",
    }
    write_video(tmp_path / "b" / "335.mp4", np.zeros((5, 32, 32, 3), np.uint8), fps=30)
    assert tiktok.find_tiktok_videos(tmp_path / "b", (335,))[335].path == tmp_path / "b" / "335.mp4"
    with pytest.raises(ev.EvalInputError, match="lacks TikTok test video.*00337, 00338, 00339, 00340.*--tiktok-videos"):
        tiktok.find_tiktok_videos(tmp_path / "a")
    assert tiktok.TIKTOK_TEST_VIDEOS == (335, 336, 337, 338, 339, 340)


def test_generated_frame_k_is_compared_with_ground_truth_frame_k(tmp_path):
    dataset = tiktok_dataset(tmp_path / "data", [335, 336], frames=12)
    studio = EchoStudio()
    template = GenerateSettings(prompt="a person dancing", width=48, height=64, steps=1)
    outcome = tiktok.run_tiktok(
        studio,
        dataset,
        tmp_path / "run",
        template,
        tiktok.TikTokSettings(videos=(335, 336), max_frames=9),
        PROTOCOL,
        "all",
        models=tiny_models(),
        progress=lambda message: None,
    )
    call = studio.calls[0]
    assert call.settings.num_frames == 9 and call.settings.fps == 30.0 and call.settings.prompt == "a person dancing"
    assert call.pose_settings.retarget == "none"  # the same person: poses are used as detected
    # An echo of the (H.264-compressed) driving frames: aligned frames nearly match...
    psnr = outcome.result.metrics["psnr*"]
    assert psnr > 30
    # ...while the same frames one step off would not.
    pred = tiktok._load_frames(tmp_path / "run" / "frames" / "pred" / "00335")
    gt = tiktok._load_frames(tmp_path / "run" / "frames" / "gt" / "00335")
    assert len(pred) == len(gt) == 9
    from dynamictrl.eval.frames import psnr_star_per_frame

    assert psnr_star_per_frame(pred[2:], gt[1:-1]).mean() < psnr - 8
    assert outcome.generated == [335, 336]
    assert (tmp_path / "run" / "pred" / "00335.mp4").is_file()
    assert (tmp_path / "run" / "work" / "00335" / "reference.png").is_file()


@pytest.mark.slow  # generates the benchmark videos
def test_table_has_the_paper_rows_and_resume_skips_generation(tmp_path):
    dataset = tiktok_dataset(tmp_path / "data", [335, 336], frames=10)
    template = GenerateSettings(prompt="a dancer", width=48, height=64, steps=1)
    settings = tiktok.TikTokSettings(videos=(335, 336))
    first = tiktok.run_tiktok(
        EchoStudio(), dataset, tmp_path / "run", template, settings, PROTOCOL, "all", models=tiny_models()
    )
    table = first.table_path.read_text()
    assert "| DynamiCtrl-5B (paper) | 2.34 | 0.766 | 30.22 | 20.41 | 0.166 | 13.77 | 152.31 |" in table
    assert "| MimicMotion | 5.85 | 0.601 | - | 14.44 | 0.414 | - | 232.95 |" in table
    assert "not comparable to the published rows" in table  # only 2 of the 6 test videos
    data = json.loads(first.json_path.read_text())
    assert data["tiktok"]["frames_per_video"] == {"00335": 9, "00336": 9}  # 10 frames -> 4k+1 = 9
    assert data["tiktok"]["complete_test_split"] is False
    assert data["tiktok"]["paper_rows"]["UniAnimate"]["psnr*"] == 20.58

    studio = EchoStudio()
    again = tiktok.run_tiktok(
        studio, dataset, tmp_path / "run", template, settings, PROTOCOL, "all", models=tiny_models()
    )
    assert studio.calls == [] and again.generated == []
    assert again.result.metrics == pytest.approx(first.result.metrics)
    changed = tiktok.run_tiktok(
        studio,
        dataset,
        tmp_path / "run",
        GenerateSettings(prompt="x", width=48, height=64, steps=2),
        settings,
        PROTOCOL,
        "l1",
        models=tiny_models(),
    )
    assert changed.generated == [335, 336]  # new settings: generated again


def test_too_short_videos_fail_before_generating(tmp_path):
    dataset = tiktok_dataset(tmp_path / "data", [335], frames=4)
    studio = EchoStudio()
    with pytest.raises(ev.EvalInputError, match="at least 5"):
        tiktok.run_tiktok(
            studio,
            dataset,
            tmp_path / "run",
            GenerateSettings(prompt="x", width=48, height=64),
            tiktok.TikTokSettings(videos=(335,)),
            PROTOCOL,
            "frame",
            models=tiny_models(),
        )
    dataset = tiktok_dataset(tmp_path / "data2", [335], frames=9)
    with pytest.raises(ev.EvalInputError, match="fewer than one 16-frame clip"):
        tiktok.run_tiktok(
            studio,
            dataset,
            tmp_path / "run",
            GenerateSettings(prompt="x", width=48, height=64),
            tiktok.TikTokSettings(videos=(335,)),
            ev.EvalProtocol(),
            "all",
            models=tiny_models(),
        )
    assert studio.calls == []


@pytest.mark.slow  # generates the benchmark videos
def test_cli_tiktok_with_the_tiny_models(tiny_weights, tmp_path, capsys):
    """The real pose stage (tiny DWPose) and pipeline (tiny DynamiCtrl) through the command."""
    dataset = tiktok_dataset(tmp_path / "data", [335, 336], frames=12)
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    out = tmp_path / "copy" / "table.md"
    args = parser.parse_args(
        [
            "--tiktok",
            str(dataset),
            "--out-dir",
            str(tmp_path / "run"),
            "--tiktok-videos",
            "335,336",
            "--frames",
            "5",
            "--width",
            "48",
            "--height",
            "64",
            "--steps",
            "1",
            "--prompt",
            "a person dancing",
            "--metrics",
            "l1,ssim,psnr,psnr*",
            "--size",
            "32",
            "--weights-dir",
            str(tiny_weights),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert eval_cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "00335: generating 5 frames at 48x64" in printed and "| **Ours (this run)** |" in printed
    assert out.read_text() == (tmp_path / "run" / "table.md").read_text()
    assert read_video(tmp_path / "run" / "pred" / "00335.mp4").num_frames == 5
    manifest = json.loads((tmp_path / "run" / "pred" / "00335.json").read_text())
    assert manifest["inputs"]["pose_extraction"]["settings"]["retarget"] == "none"
    assert manifest["inputs"]["pose_extraction"]["settings"]["fps"] == 30.0
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["counts"] == {"videos": 2, "frames": 8}
    assert 0 < data["metrics"]["ssim"] < 1
