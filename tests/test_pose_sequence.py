"""The pose-sequence builder on the real detector path (tiny ONNX models, see dynamictrl/testing/onnx.py)."""

import numpy as np
import pytest
import torch

from dynamictrl.pose.render import draw_pose
from dynamictrl.pose.sequence import NoPersonError, build_pose_sequence, cover_crop

WIDTH, HEIGHT = 48, 64


def uniform(color, height=240, width=320):
    """The tiny detector reads the top-left pixel: red gates people on, green shifts them."""
    return np.broadcast_to(np.array(color, dtype=np.uint8), (height, width, 3)).copy()


def driving_clip(count=8, people_every_frame=True):
    frames = [uniform((255, 8 * k, 0)) for k in range(count)]
    if not people_every_frame:
        frames[2] = uniform((0, 0, 0))
        frames[3] = uniform((0, 0, 0))
    return np.stack(frames)


@pytest.mark.parametrize("source_hw", [(300, 200), (200, 300), (640, 480), (100, 100)])
def test_cover_crop_fills_the_target_and_keeps_the_centre(source_hw):
    h, w = source_hw
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[h // 2 - h // 10 : h // 2 + h // 10, w // 2 - w // 10 : w // 2 + w // 10] = 255  # centred square
    out = cover_crop(image, WIDTH, HEIGHT)
    assert out.shape == (HEIGHT, WIDTH, 3) and out.dtype == np.uint8
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(ys.mean() - (HEIGHT - 1) / 2) <= 1 and abs(xs.mean() - (WIDTH - 1) / 2) <= 1
    # The scale is the larger of the two ratios (cover), never a stretch:
    scale = max(HEIGHT / h, WIDTH / w)
    assert abs((ys.max() - ys.min() + 1) - 2 * (h // 10) * scale) <= 2
    assert abs((xs.max() - xs.min() + 1) - 2 * (w // 10) * scale) <= 2


def test_cover_crop_of_the_target_size_is_identity():
    image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    np.testing.assert_array_equal(cover_crop(image, WIDTH, HEIGHT), image)


def test_sequence_has_reference_pose_first_and_pipeline_ready_tensor(detector):
    sequence = build_pose_sequence(uniform((255, 0, 0), 480, 360), driving_clip(8), detector, WIDTH, HEIGHT)
    assert sequence.num_frames == 9
    assert sequence.reference_image.shape == (HEIGHT, WIDTH, 3)
    assert sequence.pose_frames.shape == (9, HEIGHT, WIDTH, 3) and sequence.pose_frames.dtype == np.uint8
    np.testing.assert_array_equal(sequence.pose_frames[0], draw_pose(sequence.reference_pose, HEIGHT, WIDTH))
    assert sequence.poses[0] is sequence.reference_pose
    tensor = sequence.pose_tensor()
    assert tensor.shape == (9, 3, HEIGHT, WIDTH) and tensor.min() >= -1 and tensor.max() <= 1
    torch.testing.assert_close(
        tensor[0], torch.from_numpy(sequence.pose_frames[0]).permute(2, 0, 1).float() / 127.5 - 1
    )
    assert sequence.filled_frames == 0 and sequence.retarget_mode == "global"
    assert sequence.pose_frames[1:].any()  # skeletons were drawn


def test_driving_motion_moves_the_skeletons(detector):
    sequence = build_pose_sequence(
        uniform((255, 0, 0), 480, 360), driving_clip(8), detector, WIDTH, HEIGHT, retarget="none"
    )
    xs = [frame.people[0].body[1, 0] for frame in sequence.poses[1:]]
    assert all(b > a for a, b in zip(xs, xs[1:]))  # the green channel shifts the people right


def test_frames_without_a_person_reuse_the_previous_pose_and_are_counted(detector):
    sequence = build_pose_sequence(
        uniform((255, 0, 0), 480, 360), driving_clip(8, people_every_frame=False), detector, WIDTH, HEIGHT
    )
    assert sequence.filled_frames == 2
    np.testing.assert_array_equal(sequence.pose_frames[3], sequence.pose_frames[2])
    np.testing.assert_array_equal(sequence.pose_frames[4], sequence.pose_frames[2])


def test_no_person_in_the_reference_is_a_clear_error(detector):
    with pytest.raises(NoPersonError, match="No person found in the reference image"):
        build_pose_sequence(uniform((0, 0, 0), 480, 360), driving_clip(4), detector, WIDTH, HEIGHT)


def test_no_person_in_the_whole_driving_video_is_a_clear_error(detector):
    nobody = np.stack([uniform((0, 0, 0))] * 4)
    with pytest.raises(ValueError, match="No person detected in the driving video"):
        build_pose_sequence(uniform((255, 0, 0), 480, 360), nobody, detector, WIDTH, HEIGHT)


def test_overlay_and_preview(detector):
    driving = driving_clip(4)
    sequence = build_pose_sequence(uniform((255, 0, 0), 480, 360), driving, detector, WIDTH, HEIGHT)
    overlay = sequence.overlay_frames()
    assert overlay.shape == (5, HEIGHT, WIDTH, 3)
    untouched = sequence.pose_frames[0].sum(-1) == 0
    np.testing.assert_array_equal(overlay[0][untouched], sequence.reference_image[untouched])
    preview = sequence.preview_frames(driving)
    assert preview.shape[:2] == (5, HEIGHT) and preview.shape[2] > WIDTH
    np.testing.assert_array_equal(preview[:, :, :WIDTH], overlay)


@pytest.mark.parametrize("mode", ["global", "bones", "none"])
def test_every_retarget_mode_builds(detector, mode):
    sequence = build_pose_sequence(
        uniform((255, 0, 0), 480, 360), driving_clip(4), detector, WIDTH, HEIGHT, retarget=mode
    )
    assert sequence.num_frames == 5 and sequence.retarget_mode == mode


def test_bad_arguments(detector):
    with pytest.raises(ValueError, match="retarget must be one of"):
        build_pose_sequence(uniform((255, 0, 0)), driving_clip(4), detector, WIDTH, HEIGHT, retarget="affine")
    with pytest.raises(ValueError, match="driving_frames"):
        build_pose_sequence(uniform((255, 0, 0)), np.zeros((0, 8, 8, 3), np.uint8), detector, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="RGB uint8"):
        cover_crop(np.zeros((8, 8), np.uint8), WIDTH, HEIGHT)
