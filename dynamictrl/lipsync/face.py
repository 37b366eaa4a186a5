"""Face boxes from DWPose face landmarks, and the 256x256 crops MuseTalk inpaints.

MuseTalk finds its box from DWPose's 68 face points (run through mmpose) and keeps an
S3FD face detector only as a presence check and fallback. We already run DWPose for
the pose stage, so the landmarks come from our own detector: a face counts as present
when its landmarks are confident, and the S3FD fallback box becomes the landmarks' own
extent clipped to the frame.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from ..pose.types import FramePose

CROP_SIZE = 256  # MuseTalk generates the face at 256x256 (latents 32x32)
FACE_PRESENT_SCORE = 0.3  # DWPose's visibility threshold, applied to the mean face score
NOSE_BRIDGE = 29  # iBUG-68 point the box is centred on vertically
DEFAULT_EXTRA_MARGIN = 10  # v1.5: the crop reaches 10 px below the chin (as in its training)


@dataclass(frozen=True)
class FaceBox:
    """A face crop in frame pixels: rows y1:y2, columns x1:x2."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)


def face_landmarks(pose: FramePose, width: int, height: int) -> np.ndarray | None:
    """(68, 2) int32 frame-pixel landmarks of the most prominent confident face, or None.

    With several people, the largest face wins: a lip-sync drives one speaker, and the
    speaker of a generated clip is the character filling the frame.
    """
    best, best_area = None, -1.0
    for person in pose.people:
        if float(np.mean(person.face_scores)) <= FACE_PRESENT_SCORE:
            continue
        points = person.face * np.array([width, height], dtype=np.float32)
        area = float(np.prod(points.max(0) - points.min(0)))
        if area > best_area:
            best, best_area = points, area
    # MuseTalk casts the landmarks to int32 (truncation), which fixes where the box lands.
    return None if best is None else best.astype(np.int32)


def landmark_box(
    landmarks: np.ndarray,
    frame_height: int,
    frame_width: int,
    bbox_shift: int = 0,
    extra_margin: int = DEFAULT_EXTRA_MARGIN,
) -> FaceBox | None:
    """MuseTalk's box: vertically centred on the nose bridge so the masked lower half of
    the crop starts near the nose; `bbox_shift` moves that centre (positive: down);
    v1.5 extends the bottom by `extra_margin` px.

    Where MuseTalk falls back to its S3FD box (box empty or left of the frame) we use the
    landmarks' extent clipped to the frame. Boxes are clipped to the frame so a crop is
    never smaller than its box (upstream would fail pasting such a face back).
    """
    xs, ys = landmarks[:, 0].astype(int), landmarks[:, 1].astype(int)
    centre_y = int(ys[NOSE_BRIDGE]) + int(bbox_shift)
    half = int(ys.max()) - centre_y
    x1, y1, x2, y2 = int(xs.min()), max(0, centre_y - half), int(xs.max()), int(ys.max())
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        x1, y1 = max(0, int(xs.min())), max(0, int(ys.min()))
    x2, y2 = min(x2, frame_width), min(y2 + int(extra_margin), frame_height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return FaceBox(x1, y1, x2, y2)


def face_boxes(
    poses: list[FramePose],
    frame_height: int,
    frame_width: int,
    bbox_shift: int = 0,
    extra_margin: int = DEFAULT_EXTRA_MARGIN,
) -> list[FaceBox | None]:
    """One box per frame; None where no confident face was found."""
    boxes = []
    for pose in poses:
        landmarks = face_landmarks(pose, frame_width, frame_height)
        boxes.append(
            None if landmarks is None else landmark_box(landmarks, frame_height, frame_width, bbox_shift, extra_margin)
        )
    return boxes


def crop_face(frame: np.ndarray, box: FaceBox) -> np.ndarray:
    """The (256, 256, 3) uint8 crop of `box` (not square before resizing), Lanczos as upstream."""
    crop = frame[box.y1 : box.y2, box.x1 : box.x2]
    return cv2.resize(crop, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LANCZOS4)


def unet_inputs(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 256, 256, 3) uint8 RGB crops -> (masked, reference) float32 (N, 3, 256, 256) in [-1, 1].

    The lower half is blacked out in [0, 1] space before normalising, so masked pixels are
    exactly -1, as in MuseTalk's training; the reference is the unmasked crop itself.
    """
    reference = crops.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    masked = reference.copy()
    masked[:, :, CROP_SIZE // 2 :, :] = 0.0
    return (masked - 0.5) / 0.5, (reference - 0.5) / 0.5
