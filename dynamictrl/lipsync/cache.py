"""The avatar cache: what lip-sync computes from a video, kept in memory and on disk.

The key is the video's SHA-256 plus the settings and weights an avatar depends on, so a
second audio clip for the same video (in this process or a later one) skips face
detection, VAE encoding and face parsing. On disk an avatar holds no frames: they are
decoded again from the video, which is cheap next to the networks.

    <cache>/<key>/meta.json            settings, fps, frame count and size
    <cache>/<key>/avatar.safetensors   latents, face boxes (-1 = no face) and blend-crop boxes
    <cache>/<key>/masks.npz            one feathered blend mask per face frame
"""

import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .face import FaceBox
from .pipeline import Avatar, PackedMasks
from .settings import LipSyncSettings

FORMAT_VERSION = 1
logger = logging.getLogger(__name__)


def avatar_key(video_sha256: str, settings: LipSyncSettings, fingerprint: str) -> str:
    payload = json.dumps(
        {"video": video_sha256, "settings": settings.avatar_fields(), "models": fingerprint, "version": FORMAT_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _boxes_to_array(boxes) -> torch.Tensor:
    rows = [
        (-1, -1, -1, -1) if box is None else tuple(box.as_tuple() if isinstance(box, FaceBox) else box) for box in boxes
    ]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)


def _boxes_from_array(array: torch.Tensor) -> list[FaceBox | None]:
    return [None if int(row[0]) < 0 else FaceBox(*(int(v) for v in row)) for row in array]


class AvatarCache:
    """In memory (the `memory_items` most recent avatars) and, with a folder, on disk."""

    def __init__(self, folder: str | Path | None = None, memory_items: int = 2):
        self.folder = Path(folder) if folder is not None else None
        self.memory_items = memory_items
        self._memory: OrderedDict[str, Avatar] = OrderedDict()
        self.hits = {"memory": 0, "disk": 0}
        self.misses = 0

    def _remember(self, key: str, avatar: Avatar) -> None:
        self._memory[key] = avatar
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def get(self, key: str, read_frames: Callable[[], tuple[np.ndarray, float]]) -> Avatar | None:
        """The cached avatar, or None. `read_frames()` -> (frames, fps) is called on a disk hit."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits["memory"] += 1
            return self._memory[key]
        avatar = self._load(key, read_frames)
        if avatar is None:
            self.misses += 1
            return None
        self.hits["disk"] += 1
        self._remember(key, avatar)
        return avatar

    def put(self, key: str, avatar: Avatar) -> None:
        self._remember(key, avatar)
        if self.folder is not None:
            self._save(key, avatar)

    # ------------------------------------------------------------------ disk
    def _save(self, key: str, avatar: Avatar) -> None:
        target = self.folder / key
        partial = self.folder / f"{key}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file(
            {
                "latents": avatar.latents.contiguous(),
                "boxes": _boxes_to_array(avatar.boxes),
                "crop_boxes": _boxes_to_array(avatar.crop_boxes),
            },
            str(partial / "avatar.safetensors"),
        )
        # An .npz written one mask at a time (what np.savez_compressed writes, without
        # unpacking every mask at once).
        with zipfile.ZipFile(partial / "masks.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for i, mask in enumerate(avatar.masks):
                if mask is not None:
                    with archive.open(f"{i}.npy", "w", force_zip64=True) as entry:
                        np.lib.format.write_array(entry, np.asarray(mask), allow_pickle=False)
        height, width = avatar.frames.shape[1:3]
        meta = {
            "version": FORMAT_VERSION,
            "fps": avatar.fps,
            "num_frames": avatar.num_frames,
            "height": height,
            "width": width,
        }
        (partial / "meta.json").write_text(json.dumps(meta))
        # Written under another name and renamed, so a crash never leaves half an avatar.
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)

    def _load(self, key: str, read_frames) -> Avatar | None:
        if self.folder is None or not (self.folder / key / "meta.json").is_file():
            return None
        folder = self.folder / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("version") != FORMAT_VERSION:
                return None
            tensors = load_file(str(folder / "avatar.safetensors"))
            boxes_array = tensors["boxes"]
            with np.load(folder / "masks.npz") as stored:  # packed as they are read
                names = set(stored.files)
                masks = PackedMasks(stored[str(i)] if str(i) in names else None for i in range(len(boxes_array)))
        except (OSError, ValueError, KeyError, AttributeError, SafetensorError, zipfile.BadZipFile) as error:
            # A damaged entry (disk full, killed mid-copy) costs a recomputation, never a crash.
            logger.warning("ignoring unreadable lip-sync avatar cache entry %s: %s", folder, error)
            return None
        frames, fps = read_frames()
        if len(frames) != meta["num_frames"] or tuple(frames.shape[1:3]) != (meta["height"], meta["width"]):
            return None  # the key matched but the video decodes differently: recompute
        boxes = _boxes_from_array(tensors["boxes"])
        # Blend-crop boxes may start left of or above the frame (padded), so they are
        # present exactly where a face box is.
        crop_boxes = [
            None if box is None else tuple(int(v) for v in row) for box, row in zip(boxes, tensors["crop_boxes"])
        ]
        faced = [i for i, box in enumerate(boxes) if box is not None]
        rows = {frame: row for row, frame in enumerate(faced)}
        return Avatar(
            frames,
            float(meta["fps"]),
            boxes,
            tensors["latents"],
            [rows.get(i) for i in range(len(boxes))],
            masks,
            crop_boxes,
        )
