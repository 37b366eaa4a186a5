"""Training data: the `prepare-data` folder layout and the clips cut from it.

Layout (written by `python -m dynamictrl prepare-data`)::

    DATA/manifest.json   {"version": 1, "width": W, "height": H, "fps": F,
                          "items": [{"id", "video", "pose", "prompt", "mask", "num_frames"}],
                          "skipped": [{"video", "reason"}]}
    DATA/videos/<id>.mp4  RGB frames, W x H at F fps
    DATA/poses/<id>.mp4   DWPose skeletons, frame i = the pose of video frame i
    DATA/masks/<id>.png   optional: white = region blacked out in the reference

A training sample is the official one: T = 4k+1 consecutive frames of a video (the
target), the clip's first frame as the reference image (masked for the mask
variants), the clip's pose frames (frame 0 is the reference's own pose, as at
inference) and the item's prompt.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from ..images import openable_formats
from ..video import VideoError, read_video

MANIFEST_VERSION = 1


class DatasetError(ValueError):
    """The training data folder is unusable; the message says what to fix."""


@dataclass(frozen=True)
class ManifestItem:
    id: str
    video: Path
    pose: Path
    prompt: str
    mask: Path | None
    num_frames: int


@dataclass
class Manifest:
    root: Path
    width: int
    height: int
    fps: float
    items: list[ManifestItem]
    skipped: list[dict]

    @classmethod
    def load(cls, data_dir: str | Path, check_files: bool = True) -> "Manifest":
        root = Path(data_dir)
        path = root / "manifest.json"
        if not path.is_file():
            raise DatasetError(
                f"{path} not found: point data.data_dir at a folder made by `python -m dynamictrl prepare-data`."
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path} is not valid JSON ({error}); re-run prepare-data.") from error
        if not isinstance(raw, dict):
            raise DatasetError(f"{path} must hold a JSON object.")
        version = raw.get("version")
        if version != MANIFEST_VERSION:
            raise DatasetError(f"{path} has version {version!r}; this trainer reads version {MANIFEST_VERSION}.")
        for key in ("width", "height", "fps", "items"):
            if key not in raw:
                raise DatasetError(f"{path} has no {key!r}; re-run prepare-data.")
        width, height, fps = raw["width"], raw["height"], raw["fps"]
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise DatasetError(f"{path}: width and height must be positive integers, got {width}x{height}.")
        if not isinstance(raw["items"], list):
            raise DatasetError(f"{path}: 'items' must be a list.")
        items, seen = [], set()
        for n, entry in enumerate(raw["items"]):
            items.append(cls._item(root, path, n, entry, check_files))
            if items[-1].id in seen:
                raise DatasetError(f"{path}: item id {items[-1].id!r} appears twice; ids must be unique.")
            seen.add(items[-1].id)
        return cls(root, width, height, float(fps), items, list(raw.get("skipped") or []))

    @staticmethod
    def _item(root: Path, path: Path, n: int, entry, check_files: bool) -> ManifestItem:
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: items[{n}] must be an object.")
        missing = [k for k in ("id", "video", "pose", "prompt", "num_frames") if k not in entry]
        if missing:
            raise DatasetError(f"{path}: items[{n}] lacks {', '.join(missing)}; re-run prepare-data.")
        num_frames = entry["num_frames"]
        if not isinstance(num_frames, int) or num_frames < 1:
            raise DatasetError(f"{path}: items[{n}] ({entry['id']}) has num_frames {num_frames!r}.")
        if not isinstance(entry["prompt"], str):
            raise DatasetError(f"{path}: items[{n}] ({entry['id']}) prompt must be a string.")
        item = ManifestItem(
            id=str(entry["id"]),
            video=root / entry["video"],
            pose=root / entry["pose"],
            prompt=entry["prompt"],
            mask=root / entry["mask"] if entry.get("mask") else None,
            num_frames=num_frames,
        )
        if check_files:
            for label, file in (("video", item.video), ("pose", item.pose), ("mask", item.mask)):
                if file is not None and not file.is_file():
                    raise DatasetError(f"{path}: the {label} of {item.id} ({file}) does not exist.")
        return item


@dataclass(frozen=True)
class ClipRef:
    """One training clip: frames [start, start + T) of a manifest item."""

    item: ManifestItem
    start: int
    masked: bool

    @property
    def key(self) -> str:
        return f"{self.item.id}@{self.start}" + ("-masked" if self.masked else "")


def plan_clips(manifest: Manifest, num_frames: int, stride: int, use_masks: bool) -> tuple[list[ClipRef], list[str]]:
    """Every clip of the dataset, and the ids of items too short for one clip.

    A masked item gives one clip starting at frame 0: its mask was drawn on the video's
    first frame and does not follow the person through later frames."""
    clips, too_short = [], []
    for item in manifest.items:
        if item.num_frames < num_frames:
            too_short.append(item.id)
            continue
        if use_masks and item.mask is not None:
            clips.append(ClipRef(item, 0, True))
            continue
        clips.extend(ClipRef(item, start, False) for start in range(0, item.num_frames - num_frames + 1, stride))
    return clips, too_short


def load_mask(path: Path, width: int, height: int) -> np.ndarray:
    """(H, W) bool, True where the reference is blacked out (white in the PNG)."""
    with PIL.Image.open(path, formats=openable_formats()) as image:  # PIL's allow-list (no EPS)
        mask = image.convert("L")
        if mask.size != (width, height):
            mask = mask.resize((width, height), PIL.Image.NEAREST)
        return np.asarray(mask) >= 128


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked pixels set to 0 (black), as the user does before inference."""
    out = image.copy()
    out[mask] = 0
    return out


class ClipDataset(Dataset):
    """Decoded clips as uint8 tensors (kept small for the DataLoader; the trainer maps
    them to [-1, 1] with x / 127.5 - 1, the pipeline's conversion).

    Sample: `index`, `key`, `prompt`, `video` (T, 3, H, W), `pose` (T, 3, H, W),
    `reference` (3, H, W) = video frame 0, blacked out where the mask says so."""

    def __init__(self, data_dir: str | Path, num_frames: int, clip_stride: int | None = None, use_masks: bool = False):
        self.manifest = Manifest.load(data_dir)
        self.num_frames = num_frames
        self.clips, self.too_short = plan_clips(self.manifest, num_frames, clip_stride or num_frames, use_masks)
        if not self.clips:
            raise DatasetError(
                f"No clip of {num_frames} frames in {self.manifest.root}: "
                f"{len(self.manifest.items)} items, {len(self.too_short)} shorter than {num_frames} frames. "
                "Lower data.num_frames or add longer videos."
            )

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every clip."""
        return self.manifest.height, self.manifest.width

    def __len__(self) -> int:
        return len(self.clips)

    def _frames(self, path: Path, clip: ClipRef, label: str) -> np.ndarray:
        stop = clip.start + self.num_frames
        try:
            video = read_video(path, max_frames=stop)
        except VideoError as error:
            raise DatasetError(f"{clip.item.id}: {error}") from error
        if video.num_frames < stop:
            raise DatasetError(
                f"The {label} of {clip.item.id} ({path.name}) has {video.num_frames} frames, the manifest says "
                f"{clip.item.num_frames}; re-run prepare-data."
            )
        if video.size != self.size:
            raise DatasetError(
                f"The {label} of {clip.item.id} is {video.size[1]}x{video.size[0]}, the manifest says "
                f"{self.size[1]}x{self.size[0]}; re-run prepare-data."
            )
        return video.frames[clip.start : stop]

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        frames = self._frames(clip.item.video, clip, "video")
        poses = self._frames(clip.item.pose, clip, "pose video")
        reference = frames[0]
        if clip.masked:
            reference = apply_mask(reference, load_mask(clip.item.mask, self.size[1], self.size[0]))
        return {
            "index": index,
            "key": clip.key,
            "prompt": clip.item.prompt,
            "video": torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2),
            "pose": torch.from_numpy(np.ascontiguousarray(poses)).permute(0, 3, 1, 2),
            "reference": torch.from_numpy(np.ascontiguousarray(reference)).permute(2, 0, 1),
        }


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1] (x / 127.5 - 1, as the pipeline maps images and poses)."""
    return frames.float() / 127.5 - 1
