"""The training data folder (the `prepare-data` layout) and the clips cut from it.

`make_dataset` writes tiny synthetic folders in the exact layout (manifest.json, videos/,
poses/, masks/): a coloured block moving over a flat background, and a pose video whose
"skeleton" (a red bar) follows it, so a tiny model can learn something. The other
training tests import it."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from dynamictrl.train.dataset import ClipDataset, DatasetError, Manifest, plan_clips
from dynamictrl.video import write_video

PROMPT = "a person dancing in a park"


def clip_frames(num_frames: int, width: int, height: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    video = np.empty((num_frames, height, width, 3), np.uint8)
    video[:] = (40, 80, 160)
    pose = np.zeros_like(video)
    for f in range(num_frames):
        x = 4 + (2 * f + offset) % (width - 12)
        video[f, 8 : height - 8, x : x + 8] = (220, 180, 60)
        pose[f, 10 : height - 10, x + 3 : x + 5] = (255, 0, 0)
    return video, pose


def make_dataset(root, items=(("clip001", 9),), width=32, height=32, fps=8, masks=(), prompts=None) -> Path:
    """`items`: (id, frame count) pairs; ids in `masks` get a mask (left half white)."""
    root = Path(root)
    entries = []
    for n, (item_id, frames) in enumerate(items):
        video, pose = clip_frames(frames, width, height, offset=3 * n)
        write_video(root / "videos" / f"{item_id}.mp4", video, fps=fps)
        write_video(root / "poses" / f"{item_id}.mp4", pose, fps=fps)
        mask = None
        if item_id in masks:
            image = np.zeros((height, width), np.uint8)
            image[:, : width // 2] = 255
            (root / "masks").mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(image).save(root / "masks" / f"{item_id}.png")
            mask = f"masks/{item_id}.png"
        entries.append(
            {
                "id": item_id,
                "video": f"videos/{item_id}.mp4",
                "pose": f"poses/{item_id}.mp4",
                "prompt": (prompts or {}).get(item_id, PROMPT),
                "mask": mask,
                "num_frames": frames,
            }
        )
    manifest = {
        "version": 1,
        "width": width,
        "height": height,
        "fps": fps,
        "items": entries,
        "skipped": [{"video": "raw/broken.mp4", "reason": "no person found"}],
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def test_manifest_and_clip_plan(tmp_path):
    root = make_dataset(tmp_path / "d", items=(("a", 9), ("b", 18), ("short", 5)), masks=("b",))
    manifest = Manifest.load(root)
    assert (manifest.width, manifest.height, manifest.fps) == (32, 32, 8.0) and len(manifest.skipped) == 1
    clips, too_short = plan_clips(manifest, 9, 4, use_masks=False)
    assert [(c.item.id, c.start) for c in clips] == [("a", 0), ("b", 0), ("b", 4), ("b", 8)]
    assert too_short == ["short"]
    # A masked item gives only its clip from frame 0 (the frame its mask was drawn on).
    clips, _ = plan_clips(manifest, 9, 4, use_masks=True)
    assert [(c.item.id, c.start, c.masked) for c in clips] == [("a", 0, False), ("b", 0, True)]


def test_clip_samples_are_the_official_training_sample(tmp_path):
    root = make_dataset(tmp_path / "d", items=(("a", 9), ("b", 13)), masks=("b",))
    data = ClipDataset(root, 9, clip_stride=4)
    assert len(data) == 3 and data.size == (32, 32)
    sample = data[2]  # b, frames 4..12
    video, pose = clip_frames(13, 32, 32, offset=3)
    assert sample["prompt"] == PROMPT and sample["key"] == "b@4"
    assert sample["video"].shape == (9, 3, 32, 32) and sample["pose"].shape == (9, 3, 32, 32)
    got_video = sample["video"].permute(0, 2, 3, 1).numpy().astype(int)
    got_pose = sample["pose"].permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(got_video - video[4:13]).mean() < 6  # H.264 round trip
    assert np.abs(got_pose - pose[4:13]).mean() < 6
    assert np.array_equal(sample["reference"].numpy(), sample["video"][0].numpy())

    masked = ClipDataset(root, 9, clip_stride=4, use_masks=True)[1]
    assert masked["key"] == "b@0-masked"
    assert masked["reference"][:, :, :16].max() == 0  # white half of the mask is blacked out
    assert np.array_equal(masked["reference"][:, :, 16:].numpy(), masked["video"][0, :, :, 16:].numpy())


def test_data_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="prepare-data"):
        Manifest.load(tmp_path)
    root = make_dataset(tmp_path / "d")
    (root / "poses" / "clip001.mp4").unlink()
    with pytest.raises(DatasetError, match="pose of clip001"):
        Manifest.load(root)
    root = make_dataset(tmp_path / "e")
    with pytest.raises(DatasetError, match="Lower data.num_frames"):
        ClipDataset(root, 13)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["version"] = 2
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="version"):
        Manifest.load(root)
