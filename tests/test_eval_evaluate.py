"""Pairing, input checks, the evaluation core, the table and the `evaluate` command."""

import argparse
import json

import numpy as np
import pytest

from dynamictrl.eval import cli as eval_cli
from dynamictrl.eval import core as ev
from dynamictrl.eval import frames as fm
from dynamictrl.eval.tiktok import PAPER_TIKTOK
from dynamictrl.testing.eval import moving_square_video, random_lpips, save_frames, tiny_backbone, tiny_models
from dynamictrl.video import write_video

PROTOCOL = ev.EvalProtocol(size=32, clip_length=4)


def noisy(frames, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def folders(tmp_path):
    """gt/00335/images/*.png and gt/00336/*.png; pred/335/*.png and pred/336/*.png (noisy)."""
    videos = {335: moving_square_video(10, 40, 32, seed=1), 336: moving_square_video(10, 40, 32, seed=2)}
    save_frames(tmp_path / "gt" / "00335" / "images", videos[335])
    save_frames(tmp_path / "gt" / "00336", videos[336])
    for video_id, frames in videos.items():
        save_frames(tmp_path / "pred" / str(video_id), noisy(frames, 20, seed=video_id))
    return tmp_path / "pred", tmp_path / "gt", videos


def test_parse_metrics():
    assert ev.parse_metrics("all") == ("l1", "ssim", "psnr", "psnr*", "lpips", "fid-vid", "fvd")
    assert ev.parse_metrics("frame") == ("l1", "ssim", "psnr", "psnr*", "lpips")
    assert ev.parse_metrics("FVD, psnr*,l1") == ("l1", "psnr*", "fvd")
    with pytest.raises(ValueError, match="Unknown metric 'fid'"):
        ev.parse_metrics("fid")
    with pytest.raises(ValueError, match="No metric"):
        ev.parse_metrics(" , ")


def test_sources_pair_by_name_and_number(folders, tmp_path):
    pred, gt, _ = folders
    pairs = ev.pair_sources(pred, gt)
    assert [name for name, _, _ in pairs] == ["00335", "00336"]
    assert pairs[0][2].path == gt / "00335" / "images"  # the dataset's images/ subfolder
    assert pairs[0][1].path == pred / "335"
    single = ev.pair_sources(pred / "335", gt / "00336")  # one video each side: paired as given
    assert len(single) == 1 and single[0][1].path == pred / "335"


def test_missing_predictions_are_named(folders):
    pred, gt, _ = folders
    for frame in (pred / "336").iterdir():
        frame.unlink()
    (pred / "336").rmdir()
    with pytest.raises(ev.EvalInputError, match=r"no prediction in .*pred for 00336"):
        ev.pair_sources(pred, gt)


def test_size_and_count_mismatches_name_both_files_and_the_fix(folders, tmp_path):
    pred, gt, videos = folders
    save_frames(tmp_path / "small" / "00335", videos[335][:, :20])
    save_frames(tmp_path / "small" / "00336", videos[336][:, :20])
    with pytest.raises(ev.EvalInputError, match=r"00335.* is 32x20 but .*00335/images is 32x40"):
        ev.check_pairs(ev.pair_sources(tmp_path / "small", gt), PROTOCOL, ("l1",))
    (pred / "335" / "0010.png").unlink()
    with pytest.raises(ev.EvalInputError, match="has 9 frames but .* has 10: pass --trim"):
        ev.check_pairs(ev.pair_sources(pred, gt), PROTOCOL, ("l1",))
    ev.check_pairs(ev.pair_sources(pred, gt), ev.EvalProtocol(trim=True, clip_length=4), ("l1", "fvd"))


def test_too_short_for_a_clip_says_what_to_do(folders):
    pred, gt, _ = folders
    with pytest.raises(ev.EvalInputError, match="9 frames to compare after dropping frame 0, fewer than one 16-frame"):
        ev.check_pairs(ev.pair_sources(pred, gt), ev.EvalProtocol(), ("fvd",))
    ev.check_pairs(ev.pair_sources(pred, gt), ev.EvalProtocol(), ("l1", "lpips"))  # frame metrics are fine


def test_unreadable_video_names_the_file(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "clip.mp4").write_bytes(b"\x00not a video" * 50)
    write_video(tmp_path / "gt.mp4", moving_square_video(5, 32, 32), fps=8)
    with pytest.raises(ev.EvalInputError, match=r"clip\.mp4"):
        ev.check_pairs(ev.pair_sources(tmp_path / "pred", tmp_path / "gt.mp4"), PROTOCOL, ("l1",))
    with pytest.raises(ev.EvalInputError, match="does not exist"):
        ev.pair_sources(tmp_path / "nowhere", tmp_path / "gt.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ev.EvalInputError, match="No videos or frame folders"):
        ev.pair_sources(tmp_path / "empty", tmp_path / "gt.mp4")


def test_identical_inputs_give_ideal_values(folders):
    _, gt, _ = folders
    result = ev.evaluate(gt, gt, "all", PROTOCOL, models=tiny_models())
    m = result.metrics
    assert m["l1"] == 0 and m["ssim"] == pytest.approx(1.0) and m["psnr"] == m["psnr*"] == 100.0
    assert m["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert abs(m["fid-vid"]) < 1e-6 and abs(m["fvd"]) < 1e-6
    assert result.counts == {"videos": 2, "frames": 18, "clips": 12}  # 9 frames and 6 four-frame clips each


@pytest.mark.slow  # every metric, twice
def test_results_equal_the_metrics_computed_directly(folders):
    pred, gt, videos = folders
    models = tiny_models()
    result = ev.evaluate(pred, gt, "all", PROTOCOL, models=models)
    preds = {i: noisy(videos[i], 20, seed=i) for i in videos}
    # Protocol: frame 0 dropped, centre square, 32x32.
    prep = {i: (fm.prepare_frames(preds[i][1:], 32), fm.prepare_frames(videos[i][1:], 32)) for i in videos}
    l1 = np.concatenate([fm.l1_per_frame(*prep[i]) for i in videos]).mean()
    lpips = np.concatenate([random_lpips()(*prep[i]) for i in videos]).mean()
    assert result.metrics["l1"] == pytest.approx(l1, rel=1e-12)
    assert result.metrics["lpips"] == pytest.approx(lpips, rel=1e-6)
    assert result.per_video["00335"]["psnr*"] == pytest.approx(fm.psnr_star_per_frame(*prep[335]).mean())
    backbone = models.fvd
    expected_fvd = ev.distance_between(
        [backbone.features(prep[i][0], 4, 1) for i in videos], [backbone.features(prep[i][1], 4, 1) for i in videos]
    )
    assert result.metrics["fvd"] == pytest.approx(expected_fvd, rel=1e-9)
    assert list(result.metrics) == ["l1", "ssim", "psnr", "psnr*", "lpips", "fid-vid", "fvd"]


@pytest.mark.slow  # every metric over several videos
def test_worse_predictions_score_worse_on_every_metric(folders, tmp_path):
    _, gt, videos = folders
    for video_id, frames in videos.items():
        save_frames(tmp_path / "worse" / str(video_id), noisy(frames, 60, seed=video_id))
    models = tiny_models()
    mild = ev.evaluate(folders[0], gt, "all", PROTOCOL, models=models).metrics
    bad = ev.evaluate(tmp_path / "worse", gt, "all", PROTOCOL, models=models).metrics
    assert bad["l1"] > mild["l1"] and bad["lpips"] > mild["lpips"]
    assert bad["ssim"] < mild["ssim"] and bad["psnr*"] < mild["psnr*"]
    assert bad["fid-vid"] > mild["fid-vid"] and bad["fvd"] > mild["fvd"]


def test_first_frame_is_left_out_unless_asked(tmp_path):
    gt = moving_square_video(6, 32, 32, seed=7)
    pred = gt.copy()
    pred[0] = 0  # only the reference frame is wrong
    save_frames(tmp_path / "p" / "a", pred)
    save_frames(tmp_path / "g" / "a", gt)
    frame_only = ev.EvalProtocol(size=32)
    assert ev.evaluate(tmp_path / "p", tmp_path / "g", "l1", frame_only).metrics["l1"] == 0
    with_first = ev.EvalProtocol(size=32, skip_first_frame=False)
    assert ev.evaluate(tmp_path / "p", tmp_path / "g", "l1", with_first).metrics["l1"] > 0


def test_video_files_are_read_like_frame_folders(tmp_path):
    frames = moving_square_video(9, 32, 32, seed=8)
    write_video(tmp_path / "a.mp4", frames, fps=8)
    result = ev.evaluate(
        tmp_path / "a.mp4", tmp_path / "a.mp4", ("psnr*", "fvd"), PROTOCOL, models=ev.EvalModels(fvd=tiny_backbone())
    )
    assert result.metrics["psnr*"] == 100.0 and result.counts["clips"] == 5
    # 5 clips for 8-d features: said, not hidden.
    assert result.notes == [
        "FVD: 5 clips for 8-d features, so the covariances are singular and the value is only a rough estimate."
    ]


def test_table_and_json(folders, tmp_path):
    pred, gt, _ = folders
    result = ev.evaluate(pred, gt, "all", PROTOCOL, models=tiny_models())
    table, js = tmp_path / "out" / "table.md", tmp_path / "out" / "table.json"
    ev.write_outputs(result, table, js, reference_rows=PAPER_TIKTOK, reference_note="Published rows: test.")
    text = table.read_text()
    assert "| Method | L1 (E-04) ↓ | SSIM ↑ | PSNR ↑ | PSNR* ↑ | LPIPS ↓ | FID-VID ↓ | FVD ↓ |" in text
    assert "| DynamiCtrl-5B (paper) | 2.34 | 0.766 | 30.22 | 20.41 | 0.166 | 13.77 | 152.31 |" in text
    assert "| UniAnimate | 2.66 | 0.811 | 30.77 | 20.58 | 0.231 | - | 148.06 |" in text
    ours = next(line for line in text.splitlines() if line.startswith("| **Ours"))
    assert f"{result.metrics['l1'] * 1e4:.2f}" in ours and f"{result.metrics['fvd']:.2f}" in ours
    assert "frame 0 (the reference) excluded" in text and "| 00336 | 9 |" in text
    data = json.loads(js.read_text())
    assert data["metrics"]["psnr*"] == pytest.approx(result.metrics["psnr*"])
    assert data["protocol"]["clip_length"] == 4 and data["counts"]["clips"] == 12
    assert data["models"]["fvd"]["file"] == "tiny random network" and "lpips" in data["versions"]
    assert data["notes"] == []  # 12 clips for 8-d features


def parser():
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    return parser


def test_cli_frame_metrics_write_table_and_json(folders, tmp_path, capsys):
    pred, gt, _ = folders
    out = tmp_path / "res" / "table.md"
    args = parser().parse_args(
        ["--pred", str(pred), "--gt", str(gt), "--metrics", "l1,ssim,psnr,psnr*", "--size", "32", "--out", str(out)]
    )
    assert eval_cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "**Ours (this run)**" in printed and out.read_text() in printed
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["metrics"]) == {"l1", "ssim", "psnr", "psnr*"} and data["protocol"]["size"] == 32


@pytest.mark.slow  # every metric, twice
def test_cli_all_metrics_loads_the_networks_once(folders, tmp_path, capsys, monkeypatch):
    pred, gt, _ = folders
    loaded = []

    def fake_load(metrics, weights_dir=None, device="cpu", lpips_scaling="disco", local_files_only=False):
        loaded.append((metrics, str(weights_dir), lpips_scaling))
        return tiny_models()

    monkeypatch.setattr(ev.EvalModels, "load", staticmethod(fake_load))
    args = parser().parse_args(
        [
            "--pred",
            str(pred),
            "--gt",
            str(gt),
            "--size",
            "32",
            "--clip-length",
            "4",
            "--weights-dir",
            str(tmp_path / "w"),
            "--lpips-scaling",
            "standard",
            "--compare-paper",
            "--device",
            "cpu",
        ]
    )
    assert eval_cli.run(args) == 0
    assert loaded == [(ev.ALL_METRICS, str(tmp_path / "w"), "standard")]
    printed = capsys.readouterr().out
    assert "| MagicAnimate |" in printed and "FID-VID" in printed


def test_cli_errors_are_value_errors_with_the_fix(folders, tmp_path):
    pred, gt, _ = folders
    with pytest.raises(ValueError, match="needs --pred and --gt"):
        eval_cli.run(parser().parse_args(["--pred", str(pred)]))
    with pytest.raises(ev.EvalInputError, match="fewer than one 16-frame clip"):
        eval_cli.run(parser().parse_args(["--pred", str(pred), "--gt", str(gt), "--metrics", "video"]))
    with pytest.raises(ValueError, match="needs --out-dir"):
        eval_cli.run(parser().parse_args(["--tiktok", str(gt)]))
