"""From a reference image and driving frames to the pose video the model takes.

The order is the official one (`utils/pre_process.py` of the release): the reference is
cover-resized and centre-cropped to the target size *first*, its pose is detected on the
cropped image, the driving poses are retargeted into that space and drawn at the target
size; frame 0 is the reference's own pose. Unlike the official script, the cropped image
(not the uncropped original) is what the pipeline receives, so image and poses agree.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from torchvision.transforms.functional import center_crop, resize

from .render import draw_pose_video, overlay_pose, side_by_side
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


@dataclass
class PoseSequence:
    reference_image: np.ndarray  # (H, W, 3) uint8, cropped to the target size
    reference_pose: FramePose  # detected on reference_image
    driving_poses: list[FramePose]  # detections on the driving frames (tracked, gaps filled)
    poses: list[FramePose]  # T poses in reference space; poses[0] is reference_pose
    pose_frames: np.ndarray  # (T, H, W, 3) uint8, the rendered pose video
    filled_frames: int  # driving frames without a person that reused the previous pose
    retarget_mode: str
    retarget_info: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.poses)

    def pose_tensor(self) -> torch.Tensor:
        """(T, 3, H, W) float in [-1, 1], what `DynamiCtrlPipeline` takes."""
        return torch.from_numpy(self.pose_frames).permute(0, 3, 1, 2).float() / 127.5 - 1

    def reference_pil(self) -> PIL.Image.Image:
        return PIL.Image.fromarray(self.reference_image)

    def overlay_frames(self) -> np.ndarray:
        """Every retargeted skeleton drawn over the reference image: misalignment shows here."""
        return np.stack([overlay_pose(self.reference_image, pose) for pose in self.poses])

    def preview_frames(self, driving_frames: np.ndarray) -> np.ndarray:
        """The overlay (at the target size) with the driving video beside it, frame for
        frame; the driving side repeats its first frame opposite frame 0 (the reference pose)."""
        driving = np.asarray(driving_frames)
        driving = np.concatenate([driving[:1], driving])[: self.num_frames]
        return side_by_side(self.overlay_frames(), driving)


def build_pose_sequence(
    reference_image: np.ndarray | PIL.Image.Image,
    driving_frames: np.ndarray,
    detector,
    width: int,
    height: int,
    retarget: str = "global",
    detect_every: int = 1,
    progress: ProgressCallback | None = None,
) -> PoseSequence:
    """Pose video of T = len(driving_frames) + 1 frames for the reference image.

    `detector` is a `DWPoseDetector` (or anything with its `__call__` and `detect_video`).
    """
    if retarget not in RETARGET_MODES:
        raise ValueError(f"retarget must be one of {RETARGET_MODES}, got {retarget!r}.")
    driving_frames = np.asarray(driving_frames)
    if driving_frames.ndim != 4 or len(driving_frames) == 0:
        raise ValueError(f"driving_frames must be (N, H, W, 3) with N >= 1, got shape {driving_frames.shape}.")

    reference = cover_crop(reference_image, width, height)
    reference_pose = detector(reference)
    if not reference_pose.people:
        raise NoPersonError(
            "No person found in the reference image (after cropping it to "
            f"{width}x{height}). Use a photo in which one person is clearly visible, ideally full body, "
            "or pick a target size whose crop keeps the person in frame."
        )

    detected = detector.detect_video(list(driving_frames), detect_every=detect_every, progress=progress)
    tracked = track_people(detected)
    filled, filled_count = fill_missing_people(tracked)  # raises if no frame has a person

    result = retarget_poses(
        reference_pose, filled, retarget, ref_hw=(height, width), video_hw=tuple(driving_frames.shape[1:3])
    )
    poses = [reference_pose, *result.frames]
    pose_frames = draw_pose_video(poses, height, width)
    info = {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in result.info().items()}
    return PoseSequence(
        reference_image=reference,
        reference_pose=reference_pose,
        driving_poses=filled,
        poses=poses,
        pose_frames=pose_frames,
        filled_frames=filled_count,
        retarget_mode=retarget,
        retarget_info=info,
    )
