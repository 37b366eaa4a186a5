"""`prepare-data`: a folder of videos -> the training dataset layout, on the tiny models.

The tiny DWPose finds people only in frames whose top-left pixel is red (dynamictrl/testing/onnx.py), so
the source clips below put a red block there in the frames that "have a person". Each
source frame k is a flat grey of level `level(k)`, so the prepared clip tells which
source frame every output frame came from.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamictrl.data import PrepareSettings, prepare_dataset
from dynamictrl.data import cli as data_cli
from dynamictrl.data.prepare import assign_ids, source_indices
from dynamictrl.pose import draw_pose_video, load_poses
from dynamictrl.studio import Studio
from dynamictrl.video import read_video, sample_indices, write_video

WIDTH, HEIGHT = 48, 64  # the sources are 96x128: the same aspect, so the red corner survives the crop


def level(k: int) -> int:
    return 30 + 12 * k


def source_clip(path, num_frames, fps, without_person=()):
    frames = np.zeros((num_frames, 128, 96, 3), np.uint8)
    for k in range(num_frames):
        frames[k] = level(k)
        frames[k, :16, :16] = (0, 0, 0) if k in without_person else (255, 0, 0)
    return write_video(path, frames, fps=fps)


def source_levels(clip: np.ndarray) -> list[int]:
    """Which source frame each frame of a prepared clip shows (by its grey level)."""
    return [round((int(frame[HEIGHT // 2, WIDTH // 2, 0]) - 30) / 12) for frame in clip]


@pytest.fixture(scope="module")
def studio(tiny_weights):
    """The tiny DWPose, Qwen2-VL and SAM behind a CPU studio (as tests/test_studio.py)."""
    from dynamictrl.segment import Segmenter
    from dynamictrl.testing.qwen import FOLDER_NAME, save_tiny_qwen
    from dynamictrl.testing.sam import build_tiny_sam

    if not (tiny_weights / FOLDER_NAME).exists():
        save_tiny_qwen(tiny_weights)
    studio = Studio(weights_dir=tiny_weights, device="cpu")
    studio.manager.register("sam.vit_b", lambda: Segmenter(build_tiny_sam(), device="cpu"))
    return studio


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    # 32 fps -> 16 fps takes every other frame: source 4 (and 5) have nobody, so output frame 2 is filled.
    source_clip(folder / "walk.mp4", 12, fps=32, without_person=(4, 5))
    # 8 fps -> 16 fps repeats every frame; capped at max_frames=8. Same stem: one of them becomes walk_2.
    source_clip(folder / "walk.mov", 10, fps=8)
    source_clip(folder / "short.mp4", 3, fps=16)
    source_clip(folder / "empty.mp4", 6, fps=16, without_person=range(6))
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (folder / "notes.txt").write_text("not a video")
    return folder


SETTINGS = PrepareSettings(width=WIDTH, height=HEIGHT, fps=16, max_frames=8, mask="background")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every video `prepare` writes, by path, as the frames it sent to the encoder."""
    from dynamictrl.data import prepare

    frames_by_path = {}

    def keep_frames(path, frames, **kwargs):
        frames = np.stack(list(frames))
        frames_by_path[Path(path)] = frames
        return write_video(path, frames, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prepare, "write_video", keep_frames)
        yield frames_by_path


@pytest.fixture(scope="module")
def prepared(studio, sources, tmp_path_factory, written):
    out = tmp_path_factory.mktemp("dataset")
    messages = []
    report = prepare_dataset(studio, sources, out, SETTINGS, progress=lambda f, m: messages.append((f, m)))
    return out, report, messages


def manifest_of(out):
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.slow  # pose, caption and mask over whole videos
def test_layout_and_manifest(prepared):
    out, report, messages = prepared
    manifest = manifest_of(out)
    assert {k: manifest[k] for k in ("version", "width", "height", "fps", "caption", "mask_mode")} == {
        "version": 1,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": 16.0,
        "caption": True,
        "mask_mode": "background",
    }
    items = {item["id"]: item for item in manifest["items"]}
    # Sorted names: walk.mov keeps the bare stem, walk.mp4 is numbered.
    assert [(i["id"], i["source"]) for i in manifest["items"]] == [("walk", "walk.mov"), ("walk_2", "walk.mp4")]
    for item_id, frames, filled in (("walk", 8, 0), ("walk_2", 6, 1)):
        item = items[item_id]
        assert item["video"] == f"videos/{item_id}.mp4" and item["pose"] == f"poses/{item_id}.mp4"
        assert item["mask"] == f"masks/{item_id}.png" and item["pose_json"] == f"poses/{item_id}.json"
        assert (item["num_frames"], item["filled_frames"]) == (frames, filled)
        assert isinstance(item["prompt"], str) and item["prompt"]
        assert "[" not in item["prompt"]  # the unmasked frame is captioned: no placeholder
    assert report.prepared == ["walk", "walk_2"] and report.filled_frames == 1
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        [
            "manifest.json",
            "walk.mp4",
            "walk_2.mp4",
            "walk.mp4",
            "walk_2.mp4",
            "walk.json",
            "walk_2.json",
            "walk.png",
            "walk_2.png",
        ]
    )  # nothing of the skipped videos, no partial files
    assert messages[-1] == (1.0, "done") and len(messages) == 6  # one per video (notes.txt is no video)


def test_skipped_videos_and_their_reasons(prepared):
    out, report, _ = prepared
    reasons = {entry["video"]: entry["reason"] for entry in manifest_of(out)["skipped"]}
    assert sorted(reasons) == ["broken.mp4", "empty.mp4", "short.mp4"]
    assert reasons["broken.mp4"].startswith("unreadable: Could not decode broken.mp4")
    assert reasons["short.mp4"] == "too short: 3 frames at 16 fps, at least 5 needed"
    assert reasons["empty.mp4"] == "no person detected in any of its 6 frames"
    assert report.skipped == manifest_of(out)["skipped"]
    summary = report.summary()
    assert "2 videos prepared, 0 already done, 3 skipped" in summary and "skipped short.mp4: too short" in summary


def test_clips_are_cropped_and_resampled(prepared, sources, written):
    from dynamictrl.pose.sequence import cover_crop

    out, _, _ = prepared
    source = read_video(sources / "walk.mp4").frames
    expected = np.stack([cover_crop(source[k], WIDTH, HEIGHT) for k in (0, 2, 4, 6, 8, 10)])
    assert np.array_equal(written[out / "videos/walk_2.mp4"], expected)
    walk = read_video(out / "videos/walk.mp4")  # from walk.mov: 8 fps, every frame twice, capped at 8
    walk_2 = read_video(out / "videos/walk_2.mp4")  # from walk.mp4: 32 fps, every other frame
    assert walk.frames.shape == (8, HEIGHT, WIDTH, 3) and walk.fps == 16
    assert source_levels(walk.frames) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert source_levels(walk_2.frames) == [0, 2, 4, 6, 8, 10]
    assert walk_2.frames[0, :6, :6, 0].min() > 200  # the red corner: cropped like cover_crop, not letterboxed


def test_pose_videos_are_the_rendered_json(prepared, written):
    out, _, _ = prepared
    for item in manifest_of(out)["items"]:
        poses, metadata = load_poses(out / item["pose_json"])
        pose_video = read_video(out / item["pose"]).frames
        video = read_video(out / item["video"]).frames
        assert len(poses) == len(pose_video) == len(video) == item["num_frames"]
        assert pose_video.shape == video.shape
        rendered = draw_pose_video(poses, HEIGHT, WIDTH)
        assert rendered.any()
        # Exactly the renderer's frames went to the encoder; the lossy mp4 still follows them.
        assert np.array_equal(written[out / item["pose"]], rendered)
        assert np.corrcoef(pose_video.ravel(), rendered.ravel())[0, 1] > 0.8
        assert all(len(pose.people) == 2 for pose in poses)  # the tiny detector's two people
        assert metadata["filled_frames"] == item["filled_frames"]
    poses, metadata = load_poses(out / "poses/walk_2.json")
    assert metadata["filled"] == [2]  # nobody in output frame 2: it reuses frame 1's pose
    # The tiny pose model's scores follow the crop's brightness, which changes every frame.
    scores = [[person.body_scores.tolist() for person in pose.people] for pose in poses]
    assert scores[2] == scores[1] and scores[3] != scores[2]


def test_masks_are_the_studio_masks_of_the_first_frame(prepared, studio, sources):
    from dynamictrl.pose.sequence import cover_crop

    out, _, _ = prepared
    for item_id, source in (("walk", "walk.mov"), ("walk_2", "walk.mp4")):
        mask = np.asarray(Image.open(out / f"masks/{item_id}.png"))
        assert mask.shape == (HEIGHT, WIDTH) and set(np.unique(mask)) <= {0, 255}
        first = cover_crop(read_video(sources / source, max_frames=1).frames[0], WIDTH, HEIGHT)
        pose = load_poses(out / f"poses/{item_id}.json")[0][0]
        expected = studio.mask_reference(first, "background", pose=pose).mask
        assert np.array_equal(mask == 255, expected)


def test_resume_skips_finished_items(prepared, studio, sources, monkeypatch):
    out, _, _ = prepared
    before = {p: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    detector = studio.manager.get("dwpose")
    calls = []
    original = detector.detect_video
    monkeypatch.setattr(
        detector, "detect_video", lambda frames, **kwargs: calls.append(len(frames)) or original(frames, **kwargs)
    )
    report = prepare_dataset(studio, sources, out, SETTINGS)
    assert report.already_done == ["walk", "walk_2"] and report.prepared == []
    # Only the skipped videos are tried again, and only the personless one reaches the detector.
    assert calls == [6] and len(report.skipped) == 3
    assert {p: p.stat().st_mtime_ns for p in (out / "videos").iterdir()} == before
    assert [i["id"] for i in manifest_of(out)["items"]] == ["walk", "walk_2"]


def test_resume_refuses_other_settings(prepared, studio, sources):
    out, _, _ = prepared
    with pytest.raises(ValueError, match="other settings: width 48 \\(now 64\\)"):
        prepare_dataset(studio, sources, out, PrepareSettings(width=64, height=64, fps=16, mask="background"))


@pytest.mark.slow  # pose, caption and mask over whole videos
def test_an_interrupted_run_leaves_no_partial_item(studio, tmp_path, monkeypatch):
    sources = tmp_path / "sources"
    source_clip(sources / "a.mp4", 6, fps=16)
    source_clip(sources / "b.mp4", 6, fps=16, without_person=(0,))
    out = tmp_path / "dataset"
    settings = PrepareSettings(width=WIDTH, height=HEIGHT, fps=16)
    captions = []
    original = studio.caption

    def caption_then_crash(image, mask_mode=None):
        if captions:
            raise KeyboardInterrupt  # the user presses Ctrl+C while b.mp4 is captioned
        captions.append(1)
        return original(image, mask_mode)

    monkeypatch.setattr(studio, "caption", caption_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(studio, sources, out, settings)
    assert [item["id"] for item in manifest_of(out)["items"]] == ["a"]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.json", "a.mp4", "a.mp4", "manifest.json"]

    monkeypatch.setattr(studio, "caption", original)
    report = prepare_dataset(studio, sources, out, settings)
    assert report.already_done == ["a"] and report.prepared == ["b"]
    item = manifest_of(out)["items"][1]
    assert (item["id"], item["num_frames"], item["filled_frames"], item["mask"]) == ("b", 6, 1, None)


def test_deleted_files_are_made_again(studio, tmp_path):
    sources = tmp_path / "sources"
    source_clip(sources / "a.mp4", 5, fps=16)
    out = tmp_path / "dataset"
    settings = PrepareSettings(width=WIDTH, height=HEIGHT, fps=16, caption=False)
    prepare_dataset(studio, sources, out, settings)
    (out / "poses/a.mp4").unlink()
    report = prepare_dataset(studio, sources, out, settings)
    assert report.dropped == ["a"] and report.prepared == ["a"] and (out / "poses/a.mp4").is_file()


def test_cli_without_captions(studio, sources, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    out = tmp_path / "dataset"
    args = parser.parse_args(
        [
            "--videos",
            str(sources),
            "--out",
            str(out),
            "--width",
            str(WIDTH),
            "--height",
            str(HEIGHT),
            "--max-frames",
            "5",
            "--no-caption",
        ]
    )
    assert (args.mask, args.caption, args.fps) == ("none", False, 16.0)
    assert data_cli.run(args, studio=studio) == 0
    manifest = manifest_of(out)
    assert manifest["caption"] is False and manifest["mask_mode"] is None
    assert [(i["prompt"], i["mask"], i["num_frames"]) for i in manifest["items"]] == [("", None, 5), ("", None, 5)]
    printed = capsys.readouterr().out
    assert "walk.mov (4/5)" in printed and "2 videos prepared, 0 already done, 3 skipped" in printed


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"width": 50}, "multiples of 16"),
        ({"fps": 0}, "fps must be positive"),
        ({"max_frames": 3}, "at least 5"),
        ({"mask": "hair"}, "mask must be"),
    ],
)
def test_bad_settings_fail_before_any_work(studio, sources, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        settings = PrepareSettings(**{"width": WIDTH, "height": HEIGHT, **overrides})
        prepare_dataset(studio, sources, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_no_videos_is_an_error(studio, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No videos in"):
        prepare_dataset(studio, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="not a folder"):
        prepare_dataset(studio, tmp_path / "missing", tmp_path / "out")


def test_ids_are_stems_made_unique_deterministically(tmp_path):
    names = [tmp_path / n for n in ("a.mov", "a.mp4", "a_2.mp4", "b.mp4")]
    # a_2 is a real file's stem, so the second "a" skips it.
    assert assign_ids(names, {}) == {"a.mov": "a", "a.mp4": "a_3", "a_2.mp4": "a_2", "b.mp4": "b"}
    # A file added later never renames what a manifest already holds.
    assert assign_ids(names, {"a.mp4": "a"}) == {"a.mp4": "a", "a.mov": "a_3", "a_2.mp4": "a_2", "b.mp4": "b"}
    assert assign_ids([tmp_path / "x.mp4"], {}, reserved={"x"}) == {"x.mp4": "x_2"}


@pytest.mark.parametrize("source_fps, target_fps", [(30, 16), (32, 16), (8, 16), (29.97, 16), (25, 25)])
def test_resampling_matches_the_pose_stage(source_fps, target_fps):
    indices = source_indices(source_fps, target_fps)
    assert [next(indices) for _ in range(40)] == sample_indices(source_fps, target_fps, 0.0, 40)
