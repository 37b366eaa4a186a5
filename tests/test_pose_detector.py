"""DWPose detector: the real onnxruntime path on tiny ONNX files whose outputs are known.

Expected values are computed here from the written-out rules of the official pipeline
(letterbox ratio, YOLOX cell decode, 1.25 padding to a 3:4 crop, SimCC bins / 2, the
COCO-WholeBody -> OpenPose-18 name mapping), not by calling the implementation.
"""

import shutil

import numpy as np
import pytest

from dynamictrl import weights
from dynamictrl.pose.detector import DWPoseDetector, crop_person, wholebody_to_openpose
from dynamictrl.pose.types import FramePose
from dynamictrl.testing import onnx as tiny_onnx

H, W = 240, 320  # test frames; letterbox ratio = min(640/240, 640/320) = 2
RATIO = 2.0

# OpenPose-18 slot -> COCO-WholeBody index ("neck" = mean of the shoulders 5 and 6):
# nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip, r-knee,
# r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear.
OPENPOSE_FROM_COCO = [0, "neck", 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]


def frame(seed=0, gate=255, shift=0, blue=0):
    """Random RGB frame whose top-left block steers the tiny detector (see dynamictrl/testing/onnx.py)."""
    image = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    image[:16, :16] = (gate, shift, blue)
    return image


def expected_box(p):
    return np.array([p["cx"] - p["w"] / 2, p["cy"] - p["h"] / 2, p["cx"] + p["w"] / 2, p["cy"] + p["h"] / 2]) / RATIO


def expected_wholebody(box):
    """(133, 2) frame pixels and (133,) peak values for a box, by the official rules."""
    center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    w, h = (box[2] - box[0]) * 1.25, (box[3] - box[1]) * 1.25
    if w > h * 288 / 384:
        size = np.array([w, w * 384 / 288])
    else:
        size = np.array([h * 288 / 384, h])
    x_bins, y_bins, values = tiny_onnx.pose_peaks()
    bins = np.stack([x_bins, y_bins], axis=1).astype(np.float64)
    bins[values <= 0] = -1  # no positive response: location -1
    input_xy = bins / 2.0  # SimCC split ratio 2
    return center + (input_xy / np.array([288, 384]) - 0.5) * size, values


def test_end_to_end_on_the_onnxruntime_path(detector):
    assert detector.providers == ["CPUExecutionProvider"]
    assert detector.pose_input_size == (288, 384)
    pose = detector(frame())
    assert isinstance(pose, FramePose) and (pose.height, pose.width) == (H, W)
    assert len(pose.people) == 2  # duplicate removed by NMS, 0.2 person and car dropped

    for person, index in zip(pose.people, tiny_onnx.EXPECTED_PEOPLE):
        box = expected_box(tiny_onnx.DETECTOR_PROPOSALS[index])
        np.testing.assert_allclose(person.box, box / [W, H, W, H], atol=1e-6)
        points, values = expected_wholebody(box)
        points = points / [W, H]
        neck = (points[5] + points[6]) / 2
        body = np.stack([neck if k == "neck" else points[k] for k in OPENPOSE_FROM_COCO])
        body_values = np.array([1.0 if k == "neck" else values[k] for k in OPENPOSE_FROM_COCO])
        np.testing.assert_allclose(person.body, body, atol=1e-6)
        np.testing.assert_allclose(person.face, points[23:91], atol=1e-6)
        np.testing.assert_allclose(person.left_hand, points[91:112], atol=1e-6)
        np.testing.assert_allclose(person.right_hand, points[112:133], atol=1e-6)
        # scores: the peak value plus at most ~0.003 from the crop-dependent term
        np.testing.assert_allclose(person.body_scores, body_values, atol=3e-3)
        np.testing.assert_allclose(person.face_scores, values[23:91], atol=3e-3)
        np.testing.assert_allclose(person.right_hand_scores, values[112:133], atol=3e-3)
        assert person.body_scores[1] == 1.0  # neck: both shoulders > 0.3
        # the nose peaks at the crop centre, i.e. the box centre
        np.testing.assert_allclose(person.body[0], [(box[0] + box[2]) / 2 / W, (box[1] + box[3]) / 2 / H], atol=1e-6)
        assert not person.body_visible[17] and not person.body_visible[16]  # l-ear 0.2, r-ear < 0
        assert person.body_visible[[0, 1, 2, 5]].all()


def test_crop_maps_the_box_onto_the_model_input():
    image = np.zeros((H, W, 3), dtype=np.uint8)
    box = np.array([70.0, 45.0, 130.0, 195.0])  # centre (100, 120); crop 140.625 x 187.5 -> 2.048 px/px
    for point, expected in [((100, 120), (144.0, 192.0)), ((120, 150), (184.96, 253.44))]:
        image[:] = 0
        image[point[1] - 1 : point[1] + 2, point[0] - 1 : point[0] + 2] = 255
        crop, center, scale = crop_person(image, box, (288, 384))
        assert crop.shape == (3, 384, 288) and crop.dtype == np.float32
        np.testing.assert_allclose(center, [100, 120])
        np.testing.assert_allclose(scale, [140.625, 187.5])
        weight = crop[0] - crop[0].min()
        ys, xs = np.mgrid[:384, :288]
        centroid = (np.sum(xs * weight) / weight.sum(), np.sum(ys * weight) / weight.sum())
        np.testing.assert_allclose(centroid, expected, atol=0.6)
        np.testing.assert_allclose(
            crop[:, 0, 0], (0 - np.array([123.675, 116.28, 103.53])) / [58.395, 57.12, 57.375], rtol=1e-6
        )


def test_openpose_conversion_on_a_handmade_wholebody_array():
    rng = np.random.default_rng(3)
    keypoints = rng.uniform(0, 100, (2, 133, 2))
    scores = rng.uniform(0.4, 1.0, (2, 133))
    scores[1, 6] = 0.3  # person 1: right shoulder at the threshold -> neck invisible
    points, values = wholebody_to_openpose(keypoints, scores)
    assert points.shape == (2, 134, 2) and values.shape == (2, 134)
    for n in range(2):
        for slot, k in enumerate(OPENPOSE_FROM_COCO):
            if k == "neck":
                np.testing.assert_allclose(points[n, slot], (keypoints[n, 5] + keypoints[n, 6]) / 2)
            else:
                np.testing.assert_array_equal(points[n, slot], keypoints[n, k])
                assert values[n, slot] == scores[n, k]
        np.testing.assert_array_equal(points[n, 18:24], keypoints[n, 17:23])  # feet
        np.testing.assert_array_equal(points[n, 24:92], keypoints[n, 23:91])  # face
        np.testing.assert_array_equal(points[n, 92:113], keypoints[n, 91:112])  # left hand
        np.testing.assert_array_equal(points[n, 113:134], keypoints[n, 112:133])  # right hand
    assert values[0, 1] == 1.0 and values[1, 1] == 0.0


def test_no_person_gives_an_empty_frame_and_frames_are_fed_as_rgb(detector):
    # Red channel of the steering pixel is 0 -> the tiny detector finds nobody. Blue is
    # 255, so a detector fed BGR would see a person here.
    pose = detector(frame(gate=0, blue=255))
    assert pose.people == [] and (pose.height, pose.width) == (H, W)
    assert len(detector(frame(gate=255, blue=0)).people) == 2


def test_official_whole_frame_fallback_when_nobody_is_found(dwpose_weights):
    folder = dwpose_weights / "DWPose"
    official = DWPoseDetector(folder / "yolox_l.onnx", folder / "dw-ll_ucoco_384.onnx", whole_frame_if_empty=True)
    pose = official(frame(gate=0))
    assert len(pose.people) == 1
    np.testing.assert_allclose(pose.people[0].box, [0, 0, 1, 1])
    points, _ = expected_wholebody(np.array([0.0, 0.0, W, H]))
    np.testing.assert_allclose(pose.people[0].body[0], points[0] / [W, H], atol=1e-6)


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_batched_crops_match_per_frame_calls(detector, dwpose_weights, fixed_batch):
    if fixed_batch:
        detector = DWPoseDetector(
            dwpose_weights / "DWPose" / "yolox_l.onnx", dwpose_weights / "fixed_batch" / "dw-ll_ucoco_384.onnx"
        )
        assert detector.pose_batch == 1 and not detector.batched_pose
    frames = [frame(seed=i, shift=20 * i) for i in range(5)]
    single = [detector(f) for f in frames]
    detector.stats.reset()
    seen = []
    batched = detector.detect_video(np.stack(frames), batch_size=8, progress=lambda f, m: seen.append(f))
    assert detector.stats.crops == 10 and detector.stats.detector_runs == 5
    assert detector.stats.pose_runs == (10 if fixed_batch else 2)  # 8 crops + 2 crops
    assert seen[-1] == 1.0 and seen == sorted(seen)
    for a, b in zip(single, batched):
        assert len(a.people) == len(b.people) == 2
        for p, q in zip(a.people, b.people):
            np.testing.assert_array_equal(p.body, q.body)
            np.testing.assert_array_equal(p.box, q.box)
            np.testing.assert_allclose(p.body_scores, q.body_scores, atol=1e-6)
    # the crops differ, so their scores must too (catches crops paired with the wrong frame)
    assert not np.allclose(batched[0].people[0].face_scores, batched[1].people[0].face_scores, atol=1e-6)


def test_detect_every_n_reuses_the_boxes(detector):
    frames = [frame(seed=i, shift=40 * i) for i in range(7)]  # the detector's boxes move with `shift`
    detector.stats.reset()
    every3 = detector.detect_video(frames, detect_every=3, batch_size=4)
    assert detector.stats.detector_runs == 3  # frames 0, 3, 6
    every1 = detector.detect_video(frames, detect_every=1)
    for i in range(7):
        source = i - i % 3
        np.testing.assert_array_equal(every3[i].people[0].box, every1[source].people[0].box)
    assert not np.array_equal(every1[1].people[0].box, every1[0].people[0].box)


def test_missing_files_offline_name_the_folder_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "DWPose").mkdir()
    (tmp_path / "DWPose" / "yolox_l.onnx").write_bytes(b"")  # only one of the two files
    with pytest.raises(weights.WeightsNotFoundError) as error:
        DWPoseDetector.from_pretrained(weights_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "DWPose") in message
    assert f"python -m dynamictrl download dwpose --weights-dir {tmp_path}" in message
    assert "dw-ll_ucoco_384.onnx" in message.split("missing", 1)[1]
    with pytest.raises(weights.WeightsNotFoundError, match="python -m dynamictrl download dwpose"):
        DWPoseDetector(tmp_path / "DWPose" / "yolox_l.onnx", tmp_path / "nowhere.onnx")


def test_only_the_two_onnx_files_are_downloaded(tmp_path, dwpose_weights, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        shutil.copytree(dwpose_weights / "DWPose", local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    detector = DWPoseDetector.from_pretrained(weights_dir=tmp_path, device="cpu")
    assert calls == [("yzd-v/DWPose", ["yolox_l.onnx", "dw-ll_ucoco_384.onnx"])]
    assert detector.det_model_path == tmp_path / "DWPose" / "yolox_l.onnx"


def test_onnx_files_with_the_wrong_layout_are_named(dwpose_weights, tmp_path):
    folder = dwpose_weights / "DWPose"
    with pytest.raises(ValueError, match=r"person detector \(yolox_l\.onnx\).*\(1, 3, 640, 640\)") as error:
        DWPoseDetector(folder / "dw-ll_ucoco_384.onnx", folder / "dw-ll_ucoco_384.onnx")
    assert str(folder / "dw-ll_ucoco_384.onnx") in str(error.value)
    with pytest.raises(ValueError, match=r"whole-body pose model.*simcc_x"):
        DWPoseDetector(folder / "yolox_l.onnx", folder / "yolox_l.onnx")
    garbage = tmp_path / "yolox_l.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="could not be loaded"):
        DWPoseDetector(garbage, folder / "dw-ll_ucoco_384.onnx")


@pytest.mark.parametrize(
    "bad, fix",
    [
        (np.zeros((H, W, 3), dtype=np.float32), "astype"),
        (np.zeros((H, W), dtype=np.uint8), "convert"),
        (np.zeros((H, W, 4), dtype=np.uint8), "convert"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_bad_images_raise_a_value_error_naming_the_fix(detector, bad, fix):
    with pytest.raises(ValueError, match=fix):
        detector(bad)


def test_bad_video_arguments(detector):
    with pytest.raises(ValueError, match="frame 1"):
        detector.detect_video([frame(), np.zeros((H, W), dtype=np.uint8)])
    with pytest.raises(ValueError, match="detect_every"):
        detector.detect_video([frame()], detect_every=0)


# ---------------------------------------------------------------------------------------
# The pre/post-processing takes shortcuts (planar letterbox, only candidate anchors decoded,
# per-channel lookup tables). The plain official steps below must give identical arrays.


def reference_letterbox(image):
    import cv2

    ratio = min(640 / image.shape[0], 640 / image.shape[1])
    new_w, new_h = max(1, int(image.shape[1] * ratio)), max(1, int(image.shape[0] * ratio))
    canvas = np.full((640, 640, 3), 114, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


def reference_decode_detections(raw, ratio):
    from dynamictrl.pose.detector import _nms

    raw = np.array(raw, dtype=np.float32)
    cells, strides = [], []
    for stride in (8, 16, 32):
        ys, xs = np.divmod(np.arange((640 // stride) ** 2), 640 // stride)
        cells.append(np.stack([xs, ys], axis=1))
        strides.append(np.full(((640 // stride) ** 2, 1), stride))
    cells, strides = np.concatenate(cells).astype(np.int64), np.concatenate(strides).astype(np.int64)
    raw[:, :2] = (raw[:, :2] + cells) * strides
    raw[:, 2:4] = np.exp(raw[:, 2:4]) * strides
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([raw[:, :2] - half, raw[:, :2] + half], axis=1) / ratio
    scores = raw[:, 4] * raw[:, 5]
    candidates = scores > 0.1
    if not candidates.any():
        return np.zeros((0, 4))
    boxes, scores = boxes[candidates], scores[candidates]
    keep = _nms(boxes, scores, 0.45)
    boxes, scores = boxes[keep].astype(np.float64), scores[keep].astype(np.float64)
    return boxes[scores > 0.3]


def reference_crop(image, box):
    import cv2

    from dynamictrl.pose.detector import _crop_matrix, box_center_scale

    center, scale = box_center_scale(box, (288, 384))
    crop = cv2.warpAffine(image, _crop_matrix(center, scale, (288, 384)), (288, 384), flags=cv2.INTER_LINEAR)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    return ((crop - mean) / std).astype(np.float32).transpose(2, 0, 1)


def test_pre_and_post_processing_match_the_plain_official_steps():
    from dynamictrl.pose.detector import decode_detections, letterbox

    rng = np.random.default_rng(0)
    for trial in range(12):
        height, width = [(720, 1280), (1280, 720), (240, 320), (1, 900), (631, 17)][trial % 5]
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        tensor, ratio = letterbox(image)
        expected, expected_ratio = reference_letterbox(image)
        assert ratio == expected_ratio and tensor.dtype == np.float32 and np.array_equal(tensor, expected)

        # Raw YOLOX rows: many candidates, tied scores, now and then float64 or nobody.
        raw = np.zeros((8400, 85), dtype=np.float32)
        rows = rng.choice(8400, int(rng.integers(0, 400)), replace=False)
        raw[rows, :2] = rng.uniform(-1, 2, (len(rows), 2))
        raw[rows, 2:4] = rng.uniform(-2, 4, (len(rows), 2))
        raw[rows, 4:6] = rng.uniform(0, 1, (len(rows), 2))
        raw[rows[: len(rows) // 3], 4:6] = 0.8  # ties
        if trial % 4 == 3:
            raw = raw.astype(np.float64)
        before = raw.copy()
        boxes = decode_detections(raw, ratio)
        assert np.array_equal(raw, before)  # the caller's array is left alone
        expected = reference_decode_detections(raw, ratio)
        assert boxes.dtype == expected.dtype and np.array_equal(boxes, expected)

        for box in [*boxes[:2], np.array([-40.0, -25.0, width + 30.0, height * 0.8])]:
            crop, _, _ = crop_person(image, box, (288, 384))
            assert crop.flags.c_contiguous and np.array_equal(crop, reference_crop(image, box))
