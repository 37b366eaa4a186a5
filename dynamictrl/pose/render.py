"""Pose rendering, pixel-identical to the skeleton images DynamiCtrl was trained on.

The model never sees keypoints, only the RGB skeleton video, so any drawing difference
(a colour a few levels off, a limb one pixel thicker, a different resize filter) shifts
the conditioning away from the training distribution. The functions below therefore
reproduce the official DWPose drawing exactly: the same OpenCV calls on a BGR canvas
whose short side is 2160 px, the same truncations and order of operations, then
OpenCV's default (bilinear) resize to the requested size and a BGR->RGB swap.

Exactness also depends on float precision, because almost every coordinate and colour
is truncated with `int()`. The official code ran under NumPy 1.x, where arithmetic
between a single float32 value and a Python number was done in float64, while whole
float32 arrays stayed float32. NumPy 2 keeps both in float32, so single values are
widened explicitly here (`float(...)`) and only the limb end points are computed as
arrays. `tests/test_pose_render.py` checks the result against PNGs from the official code.

Coordinates are normalised (x / width, y / height); `draw_pose` accepts the official
dict layout (numpy arrays or the nested lists of a JSON file) or a `FramePose`.
"""

import math

import cv2
import numpy as np

from .types import FramePose, pose_to_dict

CANVAS_SHORT_SIDE = 2160
BODY_SCORE_THRESHOLD = 0.3
# Hand and face points are tested after truncation to integer pixels, so this really
# means "not in the first row or column" (undetected points sit at 0 or below).
EDGE_EPS = 0.01
STICK_WIDTH = 4
DIM_TABLE = (np.arange(256, dtype=np.float64) * 0.6).astype(np.uint8)

# OpenPose-18 limbs as 0-based index pairs. The official list has two more (ears to
# shoulders) that were never drawn, so only these 17 are.
BODY_LIMBS = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
]  # fmt: skip

# Drawn into a BGR canvas, so after the final swap red and blue trade places.
BODY_COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]  # fmt: skip

HAND_EDGES = [
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
]  # fmt: skip


def _leaf(values) -> np.ndarray:
    """A numpy array for one dict entry, with the dtype the official code would have had.

    Arrays keep their dtype. JSON lists have lost it; the detector's outputs are float32
    and the retargeted ones float64, so a list is read as float32 when every value is
    exactly a float32 (it came from one), else as float64. The dtype matters for the
    limbs, whose end points are scaled to pixels in the array's own precision and then
    truncated: float32 and float64 land on different sides of integer boundaries.
    """
    if isinstance(values, np.ndarray):
        return values
    wide = np.asarray(values, dtype=np.float64)
    narrow = wide.astype(np.float32)
    return narrow if np.array_equal(narrow, wide, equal_nan=True) else wide


def _scaled(color, factor) -> list[int]:
    # factor is a single (often float32) value: widened, see the module docstring.
    return [int(c * float(factor)) for c in color]


def draw_body(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Limbs as filled ellipses, the whole canvas dimmed to 60%, then the joints on top."""
    height, width = canvas.shape[:2]
    drawn = []  # polygons, to dim only the region that is not black
    for limb, (a, b) in enumerate(BODY_LIMBS):
        for person in range(len(subset)):
            score_a, score_b = score[person][a], score[person][b]
            # Strictly below: a limb is kept at exactly 0.3 although its joints are not.
            if score_a < BODY_SCORE_THRESHOLD or score_b < BODY_SCORE_THRESHOLD:
                continue
            rows = subset[person][[a, b]].astype(int)
            xs = candidate[rows, 0] * float(width)
            ys = candidate[rows, 1] * float(height)
            center = (int(np.mean(xs)), int(np.mean(ys)))
            # The differences stay in the input precision; squaring them was float64.
            dy, dx = float(ys[0] - ys[1]), float(xs[0] - xs[1])
            length = (dy**2 + dx**2) ** 0.5
            angle = math.degrees(math.atan2(dy, dx))
            polygon = cv2.ellipse2Poly(center, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, _scaled(BODY_COLORS[limb], score_a * score_b))
            drawn.append(polygon)

    # Dimming happens before the joints, so joints stay at full brightness over limbs.
    # A lookup table gives exactly the official `(canvas * 0.6).astype(uint8)` (float64
    # product, truncated); black stays black, so only the limbs' bounding box needs it.
    if drawn:
        points = np.concatenate(drawn)
        x0, y0 = np.maximum(points.min(0), 0)
        x1, y1 = np.minimum(points.max(0) + 1, (width, height))
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = cv2.LUT(canvas[y0:y1, x0:x1], DIM_TABLE)

    for joint in range(len(BODY_COLORS)):
        for person in range(len(subset)):
            row = int(subset[person][joint])
            if row == -1:  # score <= 0.3 at detection time
                continue
            x, y = candidate[row][0:2]
            center = (int(float(x) * width), int(float(y) * height))
            cv2.circle(canvas, center, 4, _scaled(BODY_COLORS[joint], score[person][joint]), thickness=-1)
    return canvas


def _rainbow(hue: float) -> tuple[float, float, float]:
    """HSV (hue, 1, 1) to RGB in floats, with matplotlib's exact arithmetic.

    The channels are multiplied by an integer and rounded by OpenCV, so the float bits
    matter: the rising channel is `1 - (1 - f)`, not `f`, as in matplotlib's formula.
    """
    sector = int(hue * 6.0)
    f = hue * 6.0 - sector
    p, q, t = 0.0, 1.0 - f, 1.0 - (1.0 - f)
    return [(1.0, t, p), (q, 1.0, p), (p, 1.0, t), (p, q, 1.0), (t, p, 1.0), (1.0, p, q)][sector % 6]


def draw_hands(canvas: np.ndarray, hands: np.ndarray, hands_score: np.ndarray) -> np.ndarray:
    """Rainbow bones (thickness 2) then red joints, both weighted by score; no threshold."""
    height, width = canvas.shape[:2]
    for points, scores in zip(hands, hands_score):
        for edge, (a, b) in enumerate(HAND_EDGES):
            x1, y1 = int(float(points[a][0]) * width), int(float(points[a][1]) * height)
            x2, y2 = int(float(points[b][0]) * width), int(float(points[b][1]) * height)
            # The two scores multiply in their own precision, then widen (module docstring).
            weight = int(float(scores[a] * scores[b]) * 255)
            if x1 > EDGE_EPS and y1 > EDGE_EPS and x2 > EDGE_EPS and y2 > EDGE_EPS:
                # An RGB triple written into the BGR canvas, and OpenCV rounds the floats.
                color = tuple(channel * weight for channel in _rainbow(edge / float(len(HAND_EDGES))))
                cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)

        for point, point_score in zip(points, scores):
            x, y = int(float(point[0]) * width), int(float(point[1]) * height)
            if x > EDGE_EPS and y > EDGE_EPS:
                cv2.circle(canvas, (x, y), 4, (0, 0, int(float(point_score) * 255)), thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, faces: np.ndarray, faces_score: np.ndarray) -> np.ndarray:
    """68 grey dots per face, brightness = score; no threshold."""
    height, width = canvas.shape[:2]
    for points, scores in zip(faces, faces_score):
        for point, point_score in zip(points, scores):
            x, y = int(float(point[0]) * width), int(float(point[1]) * height)
            grey = int(float(point_score) * 255)
            if x > EDGE_EPS and y > EDGE_EPS:
                cv2.circle(canvas, (x, y), 3, (grey, grey, grey), thickness=-1)
    return canvas


def draw_pose(pose: "dict | FramePose", height: int, width: int) -> np.ndarray:
    """The skeleton image (height, width, 3) uint8 RGB of one frame's pose."""
    if isinstance(pose, FramePose):
        pose = pose_to_dict(pose)
    bodies = pose["bodies"]

    # Drawn at a fixed resolution so stroke widths are the same fraction of the frame
    # whatever the output size.
    short_side = min(height, width)
    scale = CANVAS_SHORT_SIDE / short_side if short_side != CANVAS_SHORT_SIDE else 1
    canvas = np.zeros((int(height * scale), int(width * scale), 3), dtype=np.uint8)

    canvas = draw_body(canvas, _leaf(bodies["candidate"]), _leaf(bodies["subset"]), _leaf(bodies["score"]))
    canvas = draw_hands(canvas, _leaf(pose["hands"]), _leaf(pose["hands_score"]))
    canvas = draw_face(canvas, _leaf(pose["faces"]), _leaf(pose["faces_score"]))

    # OpenCV's default bilinear filter, as in training, not an area filter: a strong
    # downscale samples the canvas sparsely, so strokes alias and small dots can vanish.
    resized = cv2.resize(canvas, (width, height))
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def draw_pose_video(frames: list, height: int, width: int) -> np.ndarray:
    """Skeleton video (T, height, width, 3) uint8 RGB, one `draw_pose` per frame."""
    if len(frames) == 0:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack([draw_pose(frame, height, width) for frame in frames])


def overlay_pose(image: np.ndarray, pose: "dict | FramePose", alpha: float = 0.6) -> np.ndarray:
    """The skeleton blended over an RGB uint8 image, to see how well a pose fits it.

    Only skeleton pixels are blended; elsewhere the image is returned untouched (the
    black background would otherwise darken the whole picture).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    skeleton = draw_pose(pose, image.shape[0], image.shape[1])
    drawn = skeleton.any(axis=2, keepdims=True)
    blended = image.astype(np.float32) * (1.0 - alpha) + skeleton.astype(np.float32) * alpha
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where(drawn, blended, image)


def _fit_height(frames: np.ndarray, height: int) -> np.ndarray:
    if frames.shape[-3] == height:
        return frames
    width = max(1, round(frames.shape[-2] * height / frames.shape[-3]))
    flat = frames.reshape(-1, *frames.shape[-3:])
    resized = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in flat])
    return resized.reshape(*frames.shape[:-3], height, width, frames.shape[-1])


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two images (H, W, 3) or videos (T, H, W, 3) next to each other, left first.

    The right one is resized to the left one's height, keeping its aspect ratio.
    Videos must have the same number of frames.
    """
    left, right = np.asarray(left), np.asarray(right)
    if left.ndim != right.ndim or left.ndim not in (3, 4):
        raise ValueError(f"expected two images or two videos, got shapes {left.shape} and {right.shape}")
    if left.ndim == 4 and len(left) != len(right):
        raise ValueError(f"videos differ in length: {len(left)} and {len(right)} frames")
    right = _fit_height(right.astype(left.dtype, copy=False), left.shape[-3])
    return np.concatenate([left, right], axis=-2)
