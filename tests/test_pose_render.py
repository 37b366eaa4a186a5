import json

import cv2
import numpy as np
import pytest
from conftest import shared_fixture

from dynamictrl.pose.render import draw_pose, draw_pose_video, overlay_pose, side_by_side
from dynamictrl.pose.types import NUM_BODY, NUM_FACE, NUM_HAND, FramePose, PersonPose, pose_from_dict


def load_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {path}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_json(path) -> dict:
    return json.loads(path.read_text())


def person(points: dict[int, tuple[float, float, float]]) -> PersonPose:
    """A person with only the given body points (index -> (x, y, score)); no hands or face."""
    body = np.zeros((NUM_BODY, 2))
    scores = np.zeros(NUM_BODY)
    for index, (x, y, score) in points.items():
        body[index], scores[index] = (x, y), score
    return PersonPose(
        body=body,
        body_scores=scores,
        face=np.zeros((NUM_FACE, 2)),
        face_scores=np.zeros(NUM_FACE),
        left_hand=np.zeros((NUM_HAND, 2)),
        left_hand_scores=np.zeros(NUM_HAND),
        right_hand=np.zeros((NUM_HAND, 2)),
        right_hand_scores=np.zeros(NUM_HAND),
    )


@pytest.mark.parametrize(
    "name, height, width",
    [("pose1_single_frontal", 1360, 768), ("pose3_two_persons", 768, 512)],
)
def test_matches_official_renderer(name, height, width):
    pose = load_json(shared_fixture("pose_render", f"{name}.json"))
    expected = load_rgb(shared_fixture("pose_render", f"{name}_H{height}_W{width}.png"))
    rendered = draw_pose(pose, height, width)
    assert rendered.dtype == np.uint8 and rendered.shape == expected.shape == (height, width, 3)
    assert np.array_equal(rendered, expected)


def test_retargeted_frames_match_official_renderer():
    folder = shared_fixture("retarget", "s1_portrait_ref_landscape_video")
    height, width = load_json(folder / "input.json")["ref_image_hw"]
    poses = load_json(folder / "output.json")["transformed_poses"]
    video = draw_pose_video(poses, height, width)
    assert video.shape == (len(poses), height, width, 3)
    for index, frame in enumerate(video):
        expected = load_rgb(folder / f"frame_{index:02d}.png")
        assert frame.shape == expected.shape
        assert np.array_equal(frame, expected), f"frame {index} differs"


def test_frame_pose_renders_like_its_dict():
    pose = load_json(shared_fixture("pose_render", "pose3_two_persons.json"))
    typed = pose_from_dict(pose, 768, 512)
    assert np.array_equal(draw_pose(typed, 768, 512), draw_pose(pose, 768, 512))


def test_no_people_gives_black_image():
    image = draw_pose(FramePose(), 64, 48)
    assert image.shape == (64, 48, 3) and image.dtype == np.uint8 and not image.any()
    assert draw_pose_video([FramePose(), FramePose()], 64, 48).shape == (2, 64, 48, 3)


def test_invisible_body_points_are_not_drawn():
    # Neck visible, nose invisible: no limb joins them and no dot marks the nose.
    # (Large output: the bilinear downscale from the 2160 px canvas samples sparsely
    # and can miss a small dot altogether.)
    frame = FramePose([person({1: (0.5, 0.7, 0.9), 0: (0.5, 0.2, 0.2)})])
    image = draw_pose(frame, 1080, 540)
    assert image[746:766, 260:280].any()  # the neck at (270, 756)
    assert not image[:700].any()  # the nose (y = 216) and the limb would be here


def test_overlay_keeps_image_where_nothing_is_drawn():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (540, 360, 3), dtype=np.uint8)
    frame = FramePose([person({1: (0.5, 0.3, 0.9), 2: (0.3, 0.3, 0.9), 8: (0.4, 0.8, 0.9)})])
    skeleton = draw_pose(frame, 540, 360)
    drawn = skeleton.any(axis=2)
    assert drawn.any()

    blended = overlay_pose(image, frame)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    assert np.array_equal(blended[~drawn], image[~drawn])
    expected = np.rint(0.4 * image[drawn].astype(np.float32) + 0.6 * skeleton[drawn].astype(np.float32))
    assert np.abs(blended[drawn].astype(np.float32) - expected).max() <= 1


def test_side_by_side_shapes():
    left = np.zeros((3, 32, 48, 3), dtype=np.uint8)
    right = np.full((3, 16, 20, 3), 255, dtype=np.uint8)
    video = side_by_side(left, right)
    assert video.shape == (3, 32, 48 + 40, 3)
    assert not video[:, :, :48].any() and (video[:, :, 48:] == 255).all()

    assert side_by_side(left[0], left[0]).shape == (32, 96, 3)
    with pytest.raises(ValueError):
        side_by_side(left, right[:2])
