import numpy as np
import pytest

from dynamictrl.lipsync.face import (
    CROP_SIZE,
    FaceBox,
    crop_face,
    face_boxes,
    face_landmarks,
    landmark_box,
    unet_inputs,
)
from dynamictrl.pose.types import FramePose, PersonPose


def person_with_face(face_pixels: np.ndarray, width: int, height: int, score: float = 0.9) -> PersonPose:
    zeros = np.zeros
    return PersonPose(
        body=zeros((18, 2)),
        body_scores=zeros(18),
        face=face_pixels / np.array([width, height]),
        face_scores=np.full(68, score),
        left_hand=zeros((21, 2)),
        left_hand_scores=zeros(21),
        right_hand=zeros((21, 2)),
        right_hand_scores=zeros(21),
    )


def face_points(x0=100, y0=80, size=60) -> np.ndarray:
    """68 points on a grid inside [x0, x0+size] x [y0, y0+size], nose bridge (29) in the middle."""
    rng = np.random.default_rng(0)
    points = np.stack([x0 + rng.uniform(0, size, 68), y0 + rng.uniform(0, size, 68)], axis=1)
    points[0] = (x0, y0)
    points[1] = (x0 + size, y0 + size)
    points[29] = (x0 + size / 2, y0 + size / 2)
    return points


def test_landmark_box_follows_musetalk():
    lm = face_points().astype(np.int32)
    box = landmark_box(lm, frame_height=480, frame_width=640, bbox_shift=0, extra_margin=10)
    yc = lm[29, 1]
    half = lm[:, 1].max() - yc
    assert box == FaceBox(lm[:, 0].min(), yc - half, lm[:, 0].max(), lm[:, 1].max() + 10)
    shifted = landmark_box(lm, 480, 640, bbox_shift=6, extra_margin=10)
    # Moving the centre down by 6 px moves the top down by 12 (the half height shrinks too).
    assert shifted.y1 == box.y1 + 12 and shifted.y2 == box.y2


def test_landmark_box_clips_to_frame_and_falls_back():
    lm = face_points(x0=-10, y0=400, size=70).astype(np.int32)  # off the left and bottom edges
    box = landmark_box(lm, frame_height=450, frame_width=640, extra_margin=10)
    assert box.x1 == 0 and box.y2 == 450 and box.y1 == lm[:, 1].min()  # the landmarks' own extent
    nothing = landmark_box(np.zeros((68, 2), np.int32), 480, 640)
    assert nothing is None


def test_face_landmarks_picks_the_largest_confident_face():
    w, h = 640, 480
    small = person_with_face(face_points(20, 20, 30), w, h)
    large = person_with_face(face_points(300, 100, 90), w, h)
    unsure = person_with_face(face_points(100, 100, 200), w, h, score=0.2)
    lm = face_landmarks(FramePose([small, unsure, large], h, w), w, h)
    assert lm.dtype == np.int32 and lm[:, 0].min() >= 300
    assert face_landmarks(FramePose([unsure], h, w), w, h) is None
    boxes = face_boxes([FramePose([large], h, w), FramePose([], h, w)], h, w)
    assert isinstance(boxes[0], FaceBox) and boxes[1] is None


def test_crop_and_unet_inputs():
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[20:80, 30:90] = (200, 50, 10)
    crop = crop_face(frame, FaceBox(30, 20, 90, 80))
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert np.abs(crop.astype(int) - (200, 50, 10)).max() <= 1
    masked, reference = unet_inputs(crop[None])
    assert masked.shape == reference.shape == (1, 3, 256, 256)
    assert np.all(masked[:, :, 128:] == -1.0)  # the lower half is black before normalising
    np.testing.assert_allclose(masked[:, :, :128], reference[:, :, :128])
    assert reference[0, 0, 10, 10] == pytest.approx(200 / 255 * 2 - 1, abs=1e-2)
