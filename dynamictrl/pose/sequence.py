"""From a reference image and driving frames to the pose video the model takes.

Two streaming passes, so memory does not grow with the clip's pixels: pass 1 reads the
driving frames one at a time (an array, or a decoder's stream such as
`video.PickedFrames`) and keeps only their keypoints; tracking, gap filling and the
retargeting fit run on keypoints. Pass 2 is `PoseFrames`: the pose video rendered on
demand, frame by frame or window by window, straight into a video writer or the
sampler. The preview (`PoseSequence.iter_preview`) streams the same way beside a second
pass over the driving frames.

The order is the official one (`utils/pre_process.py` of the release): the reference is
cover-resized and centre-cropped to the target size *first*, its pose is detected on the
cropped image, the driving poses are retargeted into that space and drawn at the target
size; frame 0 is the reference's own pose. Unlike the official script, the cropped image
(not the uncropped original) is what the pipeline receives, so image and poses agree.
"""

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from torchvision.transforms.functional import center_crop, resize

from .render import draw_pose, overlay_pose, side_by_side
from .retarget import RETARGET_MODES, retarget_poses
from .tracking import fill_missing_people, track_people
from .types import FramePose

ProgressCallback = Callable[[float, str], None]


class NoPersonError(ValueError):
    """No person where one is needed; the message says where and what to do."""


def cover_crop(image: np.ndarray | PIL.Image.Image, width: int, height: int) -> np.ndarray:
    """Resize so the image covers (width, height), then centre-crop: the official transform
    (bilinear, antialiased, sizes rounded up)."""
    array = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"Expected an RGB uint8 image (H, W, 3), got {array.dtype} {array.shape}.")
    h, w = array.shape[:2]
    ratio = h / w
    if ratio < height / width:
        new_h, new_w = height, math.ceil(height / ratio)
    else:
        new_h, new_w = math.ceil(width * ratio), width
    tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1)  # a writable copy
    tensor = center_crop(resize(tensor, [new_h, new_w], antialias=True), [height, width])
    return tensor.permute(1, 2, 0).numpy().copy()


class PoseFrames:
    """The pose video (T, H, W, 3) uint8 RGB, drawn when asked for: `len`, an int gives
    one frame, a slice or an index array gives a stacked (n, H, W, 3) array, iteration
    yields frames in order. Only keypoints are held; each frame is `draw_pose` of its
    pose, the same bits as drawing the whole video at once (`render.draw_pose_video`).
    `np.asarray(frames)` draws them all (a whole clip in memory: avoid for long clips)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, poses: list[FramePose], height: int, width: int):
        self.poses = poses
        self.height, self.width = height, width

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.poses), self.height, self.width, 3)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return draw_pose(self.poses[index], self.height, self.width)
        indices = range(len(self))[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        frames = np.empty((len(indices), self.height, self.width, 3), dtype=np.uint8)
        for row, i in enumerate(indices):
            frames[row] = draw_pose(self.poses[int(i)], self.height, self.width)
        return frames

    def __iter__(self) -> Iterator[np.ndarray]:
        for pose in self.poses:
            yield draw_pose(pose, self.height, self.width)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)


@dataclass
class PoseSequence:
    reference_image: np.ndarray  # (H, W, 3) uint8, cropped to the target size
    reference_pose: FramePose  # detected on reference_image
    driving_poses: list[FramePose]  # detections on the driving frames (tracked, gaps filled)
    poses: list[FramePose]  # T poses in reference space; poses[0] is reference_pose
    pose_frames: PoseFrames  # (T, H, W, 3) uint8, the rendered pose video, drawn on demand
    filled_frames: int  # driving frames without a person that reused the previous pose
    retarget_mode: str
    retarget_info: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.poses)

    def pose_tensor(self) -> torch.Tensor:
        """(T, 3, H, W) float in [-1, 1] of the whole clip (a short clip's; the pipeline
        takes `pose_frames` itself and converts one window at a time)."""
        return torch.from_numpy(np.asarray(self.pose_frames)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def reference_pil(self) -> PIL.Image.Image:
        return PIL.Image.fromarray(self.reference_image)

    def iter_overlay(self) -> Iterator[np.ndarray]:
        """Every retargeted skeleton drawn over the reference image, one frame at a time:
        misalignment shows here."""
        for pose in self.poses:
            yield overlay_pose(self.reference_image, pose)

    def overlay_frames(self) -> np.ndarray:
        return np.stack(list(self.iter_overlay()))

    def iter_preview(self, driving_frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The overlay (at the target size) with the driving video beside it, frame for
        frame; the driving side repeats its first frame opposite frame 0 (the reference
        pose). `driving_frames` is read once, in order (a decoder's stream will do)."""
        driving = iter(driving_frames)
        try:
            first = next(driving, None)
            if first is None:
                raise ValueError("No driving frames for the preview.")
            sides = itertools.chain([first, first], driving)
            for overlay in self.iter_overlay():
                frame = next(sides, None)
                if frame is None:
                    raise ValueError(f"The preview needs {self.num_frames - 1} driving frames; got fewer.")
                yield side_by_side(overlay, frame)
        finally:
            if hasattr(driving, "close"):
                driving.close()  # a decoder's stream stops here, not when it is collected

    def preview_frames(self, driving_frames: np.ndarray) -> np.ndarray:
        """`iter_preview` as one array (a short clip's)."""
        return np.stack(list(self.iter_preview(driving_frames)))


def build_pose_sequence(
    reference_image: np.ndarray | PIL.Image.Image,
    driving_frames: np.ndarray | Iterable[np.ndarray],
    detector,
    width: int,
    height: int,
    retarget: str = "global",
    detect_every: int = 1,
    progress: ProgressCallback | None = None,
) -> PoseSequence:
    """Pose video of T = N + 1 frames for the reference image, from N driving frames.

    `driving_frames`: an (N, H, W, 3) array or any iterable of frames, read once in order
    (pass 1 keeps keypoints only). `detector` is a `DWPoseDetector` (or anything with its
    `__call__` and `detect_video`). The pose video is returned undrawn (`PoseFrames`).
    """
    if retarget not in RETARGET_MODES:
        raise ValueError(f"retarget must be one of {RETARGET_MODES}, got {retarget!r}.")
    if isinstance(driving_frames, np.ndarray) and (driving_frames.ndim != 4 or len(driving_frames) == 0):
        raise ValueError(f"driving_frames must be (N, H, W, 3) with N >= 1, got shape {driving_frames.shape}.")

    reference = cover_crop(reference_image, width, height)
    reference_pose = detector(reference)
    if not reference_pose.people:
        raise NoPersonError(
            "No person found in the reference image (after cropping it to "
            f"{width}x{height}). Use a photo in which one person is clearly visible, ideally full body, "
            "or pick a target size whose crop keeps the person in frame."
        )

    # Pass 1: keypoints only (each frame is dropped once its person crops are taken).
    detected = detector.detect_video(driving_frames, detect_every=detect_every, progress=progress)
    if not detected:
        raise ValueError("driving_frames must hold at least one frame.")
    video_hw = (detected[0].height, detected[0].width)
    tracked = track_people(detected)
    filled, filled_count = fill_missing_people(tracked)  # raises if no frame has a person

    result = retarget_poses(reference_pose, filled, retarget, ref_hw=(height, width), video_hw=video_hw)
    poses = [reference_pose, *result.frames]
    info = {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in result.info().items()}
    return PoseSequence(
        reference_image=reference,
        reference_pose=reference_pose,
        driving_poses=filled,
        poses=poses,
        pose_frames=PoseFrames(poses, height, width),  # pass 2: drawn when read
        filled_frames=filled_count,
        retarget_mode=retarget,
        retarget_info=info,
    )
