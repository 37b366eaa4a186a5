import json

import cv2
import numpy as np
import pytest

from dynamictrl.pose.render import draw_pose, draw_pose_video, overlay_pose, side_by_side
from dynamictrl.pose.types import NUM_BODY, NUM_FACE, NUM_HAND, FramePose, PersonPose, pose_from_dict
from tests.conftest import official_fixture


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
    pose = load_json(official_fixture("pose_render", f"{name}.json"))
    expected = load_rgb(official_fixture("pose_render", f"{name}_H{height}_W{width}.png"))
    rendered = draw_pose(pose, height, width)
    assert rendered.dtype == np.uint8 and rendered.shape == expected.shape == (height, width, 3)
    assert np.array_equal(rendered, expected)


def test_retargeted_frames_match_official_renderer():
    folder = official_fixture("retarget", "s1_portrait_ref_landscape_video")
    height, width = load_json(folder / "input.json")["ref_image_hw"]
    poses = load_json(folder / "output.json")["transformed_poses"]
    video = draw_pose_video(poses, height, width)
    assert video.shape == (len(poses), height, width, 3)
    for index, frame in enumerate(video):
        expected = load_rgb(folder / f"frame_{index:02d}.png")
        assert frame.shape == expected.shape
        assert np.array_equal(frame, expected), f"frame {index} differs"


def test_frame_pose_renders_like_its_dict():
    pose = load_json(official_fixture("pose_render", "pose3_two_persons.json"))
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


# ---------------------------------------------------------------------------------------
# `draw_pose` takes shortcuts (a reused canvas, limbs drawn pre-dimmed, only the drawn part
# of the canvas resized). `reference_draw_pose` is the plain official algorithm, step by
# step on a fresh full canvas; it must reproduce the official PNGs, and `draw_pose` must
# reproduce it pixel for pixel at any size, including 720p, where no official PNG exists.


def reference_body(canvas: np.ndarray, candidate, subset, score) -> np.ndarray:
    import math

    from dynamictrl.pose.render import BODY_COLORS, BODY_LIMBS

    H, W = canvas.shape[:2]
    for limb, (a, b) in enumerate(BODY_LIMBS):
        for n in range(len(subset)):
            if score[n][a] < 0.3 or score[n][b] < 0.3:
                continue
            rows = subset[n][[a, b]].astype(int)
            xs, ys = candidate[rows, 0] * float(W), candidate[rows, 1] * float(H)
            dy, dx = float(ys[0] - ys[1]), float(xs[0] - xs[1])
            polygon = cv2.ellipse2Poly(
                (int(np.mean(xs)), int(np.mean(ys))), (int((dy**2 + dx**2) ** 0.5 / 2), 4),
                int(math.degrees(math.atan2(dy, dx))), 0, 360, 1,
            )  # fmt: skip
            factor = float(score[n][a] * score[n][b])
            cv2.fillConvexPoly(canvas, polygon, [int(c * factor) for c in BODY_COLORS[limb]])
    canvas = (canvas * 0.6).astype(np.uint8)
    for joint in range(18):
        for n in range(len(subset)):
            row = int(subset[n][joint])
            if row != -1:
                x, y = candidate[row][0:2]
                color = [int(c * float(score[n][joint])) for c in BODY_COLORS[joint]]
                cv2.circle(canvas, (int(float(x) * W), int(float(y) * H)), 4, color, thickness=-1)
    return canvas


def reference_draw_pose(pose: dict, height: int, width: int) -> np.ndarray:
    from dynamictrl.pose.render import HAND_EDGES, _leaf, _rainbow

    short_side = min(height, width)
    scale = 2160 / short_side if short_side != 2160 else 1
    canvas = np.zeros((int(height * scale), int(width * scale), 3), dtype=np.uint8)
    H, W = canvas.shape[:2]
    canvas = reference_body(canvas, *(_leaf(pose["bodies"][k]) for k in ("candidate", "subset", "score")))
    for points, scores in zip(_leaf(pose["hands"]), _leaf(pose["hands_score"])):
        for edge, (a, b) in enumerate(HAND_EDGES):
            x1, y1 = int(float(points[a][0]) * W), int(float(points[a][1]) * H)
            x2, y2 = int(float(points[b][0]) * W), int(float(points[b][1]) * H)
            weight = int(float(scores[a] * scores[b]) * 255)
            if x1 > 0.01 and y1 > 0.01 and x2 > 0.01 and y2 > 0.01:
                color = tuple(c * weight for c in _rainbow(edge / float(len(HAND_EDGES))))
                cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
        for point, point_score in zip(points, scores):
            x, y = int(float(point[0]) * W), int(float(point[1]) * H)
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 4, (0, 0, int(float(point_score) * 255)), thickness=-1)
    for points, scores in zip(_leaf(pose["faces"]), _leaf(pose["faces_score"])):
        for point, point_score in zip(points, scores):
            x, y = int(float(point[0]) * W), int(float(point[1]) * H)
            grey = int(float(point_score) * 255)
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 3, (grey, grey, grey), thickness=-1)
    return cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)


def random_pose(rng, people: int, dtype, spread: float) -> dict:
    """A pose dict with `people` people around random centres (`spread` = body size as a
    fraction of the frame); points may leave the frame; hands and faces partly undetected
    (-1); some body scores exactly 0.3 (limb drawn, joints not)."""
    centres = rng.uniform(0.1, 0.9, (people, 1, 2))

    def around(count):
        return (centres + rng.normal(0, spread / 3, (people, count, 2))).astype(dtype)

    score = rng.uniform(0, 1, (people, 18)).astype(dtype)
    score[rng.random((people, 18)) < 0.1] = 0.3
    hands = np.concatenate([around(21), around(21)])
    hands[rng.random(hands.shape[:2]) < 0.15] = -1
    faces = around(68)
    faces[rng.random(faces.shape[:2]) < 0.15] = -1
    return {
        "bodies": {
            "candidate": around(18).reshape(-1, 2),
            "subset": np.where(score > 0.3, np.arange(18 * people).reshape(people, 18), -1).astype(dtype),
            "score": score,
        },
        "hands": hands,
        "hands_score": rng.uniform(0, 1, (2 * people, 21)).astype(dtype),
        "faces": faces,
        "faces_score": rng.uniform(0, 1, (people, 68)).astype(dtype),
    }


def canvas_is_clean() -> bool:
    """The canvas `draw_pose` keeps for the next call must be black again."""
    from dynamictrl.pose import render

    canvas = getattr(render._canvases, "canvas", None)
    return canvas is None or not canvas.any()


@pytest.mark.parametrize(
    "name, height, width",
    [("pose1_single_frontal", 1360, 768), ("pose3_two_persons", 768, 512)],
)
def test_reference_renderer_matches_the_official_one(name, height, width):
    pose = load_json(official_fixture("pose_render", f"{name}.json"))
    expected = load_rgb(official_fixture("pose_render", f"{name}_H{height}_W{width}.png"))
    assert np.array_equal(reference_draw_pose(pose, height, width), expected)


@pytest.mark.parametrize("height, width", [(720, 1280), (1280, 720)])
@pytest.mark.parametrize("name", ["pose1_single_frontal", "pose3_two_persons"])
def test_720p_matches_the_reference_renderer(name, height, width):
    pose = load_json(official_fixture("pose_render", f"{name}.json"))
    expected = reference_draw_pose(pose, height, width)
    assert expected.any()
    assert np.array_equal(draw_pose(pose, height, width), expected)
    assert np.array_equal(draw_pose(pose_from_dict(pose, height, width), height, width), expected)
    assert canvas_is_clean()


@pytest.mark.parametrize(
    "height, width",
    [
        (720, 1280), (1280, 720),  # scale 3: the drawn part alone is resized
        (1360, 768), (768, 512), (480, 832), (576, 1024),  # scales 45/16, 135/32, 9/2, 15/4: same
        (1080, 1920),  # scale 2: OpenCV's area shortcut
        (960, 544), (721, 1279), (333, 517),  # scale not a binary fraction: whole canvas resized
        (64, 48), (2160, 3840), (2400, 2400),  # tiny, scale 1, upscaling
    ],
)  # fmt: skip
def test_random_poses_match_the_reference_renderer(height, width):
    rng = np.random.default_rng(height * 10007 + width)
    for trial in range(6):
        dtype = np.float32 if trial % 2 == 0 else np.float64
        pose = random_pose(rng, people=trial % 4, dtype=dtype, spread=(0.05, 0.3, 1.0)[trial % 3])
        if trial == 3:  # JSON lists, as saved pose files hold them
            pose = json.loads(json.dumps(pose, default=lambda array: array.tolist()))
        rendered = draw_pose(pose, height, width)
        assert np.array_equal(rendered, reference_draw_pose(pose, height, width)), f"trial {trial}"
        assert canvas_is_clean(), f"trial {trial}"


def test_resizing_the_drawn_part_equals_resizing_the_canvas():
    from dynamictrl.pose.render import _resize

    rng = np.random.default_rng(0)
    for height, width in [(720, 1280), (1360, 768), (768, 512), (1080, 1920), (960, 544)]:
        short = min(height, width)
        canvas = np.zeros((int(height * 2160 / short), int(width * 2160 / short), 3), dtype=np.uint8)
        H, W = canvas.shape[:2]
        for trial in range(12):
            # Random content (every bilinear weight matters), sometimes touching an edge.
            w, h = int(rng.integers(1, W // 2)), int(rng.integers(1, H // 2))
            x0 = (0, W - w, int(rng.integers(0, W - w)))[trial % 3]
            y0 = (H - h, int(rng.integers(0, H - h)), 0)[trial % 3]
            canvas[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            expected = cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)
            assert np.array_equal(_resize(canvas, (x0, y0, x0 + w, y0 + h), height, width), expected)
            canvas[y0 : y0 + h, x0 : x0 + w] = 0
    assert not _resize(canvas, None, 64, 48).any()


def test_draw_body_dims_what_the_canvas_held_like_the_official_code():
    from dynamictrl.pose.render import _leaf, draw_body

    pose = load_json(official_fixture("pose_render", "pose1_single_frontal.json"))
    bodies = [_leaf(pose["bodies"][k]) for k in ("candidate", "subset", "score")]
    canvas = np.random.default_rng(0).integers(0, 256, (400, 300, 3), dtype=np.uint8)
    expected = reference_body(canvas.copy(), *bodies)
    assert not np.array_equal(expected, (canvas * 0.6).astype(np.uint8))  # limbs and joints drawn
    assert np.array_equal(draw_body(canvas, *bodies), expected)


def test_threads_render_independently():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    poses = [random_pose(rng, people=2, dtype=np.float32, spread=0.3) for _ in range(8)]
    sizes = [(720, 1280), (1360, 768)] * 4
    expected = [reference_draw_pose(p, h, w) for p, (h, w) in zip(poses, sizes)]
    with ThreadPoolExecutor(4) as pool:
        rendered = list(pool.map(lambda item: draw_pose(item[0], *item[1]), zip(poses, sizes)))
    assert all(np.array_equal(a, b) for a, b in zip(rendered, expected))
