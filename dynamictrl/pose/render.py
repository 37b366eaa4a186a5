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

Speed without changing a pixel (`draw_pose` costs a few ms instead of ~10 at 720p): the
~25 MB canvas is kept per thread and only the part drawn on is cleared afterwards; limbs
are drawn in their dimmed colours instead of dimming the canvas; only the drawn part of
the canvas is resized where OpenCV computes it identically (see `_resize_unit`).
`tests/test_pose_render.py` compares all of it with the plain official algorithm.
"""

import functools
import math
import threading

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


def _rainbow(hue: float) -> tuple[float, float, float]:
    """HSV (hue, 1, 1) to RGB in floats, with matplotlib's exact arithmetic.

    The channels are multiplied by an integer and rounded by OpenCV, so the float bits
    matter: the rising channel is `1 - (1 - f)`, not `f`, as in matplotlib's formula.
    """
    sector = int(hue * 6.0)
    f = hue * 6.0 - sector
    p, q, t = 0.0, 1.0 - f, 1.0 - (1.0 - f)
    return [(1.0, t, p), (q, 1.0, p), (p, 1.0, t), (p, q, 1.0), (t, p, 1.0), (1.0, p, q)][sector % 6]


# The hand bones' colours, one per edge: the same floats `_rainbow` gives each call.
HAND_RAINBOW = [_rainbow(edge / float(len(HAND_EDGES))) for edge in range(len(HAND_EDGES))]
_LIMB_A = np.array([a for a, _ in BODY_LIMBS])
_LIMB_B = np.array([b for _, b in BODY_LIMBS])
_HAND_A = np.array([a for a, _ in HAND_EDGES])
_HAND_B = np.array([b for _, b in HAND_EDGES])
# How far a drawn shape can reach past the points it is computed from (rounding of the
# ellipse polygon, the thick line's end caps), plus a safety pixel.
_SLACK = 3


class _Extent:
    """Canvas box (half-open, unclipped) that holds every pixel drawn so far."""

    __slots__ = ("x0", "y0", "x1", "y1")

    def __init__(self):
        self.x0 = self.y0 = math.inf
        self.x1 = self.y1 = -math.inf

    def add(self, xs: list, ys: list, reach: int) -> None:
        """Shapes drawn around the points (xs, ys) reaching at most `reach` pixels from them."""
        if xs:
            self.x0 = min(self.x0, min(xs) - reach)
            self.y0 = min(self.y0, min(ys) - reach)
            self.x1 = max(self.x1, max(xs) + reach + 1)
            self.y1 = max(self.y1, max(ys) + reach + 1)

    def clipped(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) inside the canvas, or None if nothing drawn lands on it."""
        x0, y0 = max(self.x0, 0), max(self.y0, 0)
        x1, y1 = min(self.x1, width), min(self.y1, height)
        if x1 <= x0 or y1 <= y0:
            return None
        return int(x0), int(y0), int(x1), int(y1)


def _draw_limbs(canvas: np.ndarray, candidate, subset, score, extent: _Extent | None) -> None:
    """The limb ellipses in their dimmed colours (see `draw_body`)."""
    height, width = canvas.shape[:2]
    people = len(subset)
    if people == 0:
        return
    score = np.asarray(score)
    score_a, score_b = score[:people, _LIMB_A], score[:people, _LIMB_B]
    # Strictly below: a limb is kept at exactly 0.3 although its joints are not.
    skip = (score_a < BODY_SCORE_THRESHOLD) | (score_b < BODY_SCORE_THRESHOLD)
    # Limb-major, person-minor: the official drawing order, which decides overlaps.
    limbs, persons = np.nonzero(~skip.T)
    if len(limbs) == 0:
        return
    subset = np.asarray(subset)
    rows_a = subset[persons, _LIMB_A[limbs]].astype(int)
    rows_b = subset[persons, _LIMB_B[limbs]].astype(int)
    # Element-wise the same operations, in the same (input) precision, as the official
    # per-limb code: scale to pixels, mean of the two ends, differences.
    xa, xb = candidate[rows_a, 0] * float(width), candidate[rows_b, 0] * float(width)
    ya, yb = candidate[rows_a, 1] * float(height), candidate[rows_b, 1] * float(height)
    centers_x, centers_y = ((xa + xb) / 2).tolist(), ((ya + yb) / 2).tolist()
    dxs, dys = (xa - xb).tolist(), (ya - yb).tolist()
    # The two scores multiply in their own precision, then widen (module docstring).
    factors = (score_a[persons, limbs] * score_b[persons, limbs]).tolist()
    xs, ys = [], []
    for limb, cx, cy, dx, dy, factor in zip(limbs.tolist(), centers_x, centers_y, dxs, dys, factors):
        center = (int(cx), int(cy))
        length = (dy**2 + dx**2) ** 0.5  # float64, as the official code squared them
        angle = math.degrees(math.atan2(dy, dx))
        half = int(length / 2)
        polygon = cv2.ellipse2Poly(center, (half, STICK_WIDTH), int(angle), 0, 360, 1)
        # The official code dims the whole canvas after the limbs; a limb pixel holds one
        # limb's colour and black stays black, so drawing the dimmed colour is identical.
        color = [int(DIM_TABLE[c]) for c in _scaled(BODY_COLORS[limb], factor)]
        cv2.fillConvexPoly(canvas, polygon, color)
        reach = max(half, STICK_WIDTH)  # the ellipse's longer semi-axis
        xs += (center[0] - reach, center[0] + reach)
        ys += (center[1] - reach, center[1] + reach)
    if extent is not None:
        extent.add(xs, ys, _SLACK)


def _draw_joints(canvas: np.ndarray, candidate, subset, score, extent: _Extent | None) -> None:
    height, width = canvas.shape[:2]
    if len(subset) == 0:
        return
    rows = np.asarray(subset).tolist()
    points = np.asarray(candidate).tolist()
    scores = np.asarray(score).tolist()
    xs, ys = [], []
    for joint in range(len(BODY_COLORS)):
        for person in range(len(rows)):
            row = int(rows[person][joint])
            if row == -1:  # score <= 0.3 at detection time
                continue
            x, y = points[row][0:2]
            center = (int(float(x) * width), int(float(y) * height))
            cv2.circle(canvas, center, 4, _scaled(BODY_COLORS[joint], scores[person][joint]), thickness=-1)
            xs.append(center[0])
            ys.append(center[1])
    if extent is not None:
        extent.add(xs, ys, 4 + _SLACK)


def draw_body(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Limbs as filled ellipses, the whole canvas dimmed to 60%, then the joints on top."""
    # Dimming what the canvas already holds, then drawing the limbs in dimmed colours, is
    # the official draw-then-dim (limbs overwrite pixels); `draw_pose` skips this step
    # because its canvas is black. A lookup table gives exactly `(canvas * 0.6).astype(uint8)`.
    cv2.LUT(canvas, DIM_TABLE, dst=canvas)
    _draw_limbs(canvas, candidate, subset, score, None)
    _draw_joints(canvas, candidate, subset, score, None)
    return canvas


def _draw_hands(canvas: np.ndarray, hands, hands_score, extent: _Extent | None) -> None:
    height, width = canvas.shape[:2]
    count = min(len(hands), len(hands_score))
    if count == 0:
        return
    hands_score = np.asarray(hands_score)[:count]
    # The two scores multiply in their own precision, then widen (module docstring).
    products = (hands_score[:, _HAND_A] * hands_score[:, _HAND_B]).tolist()
    all_points, all_scores = np.asarray(hands)[:count].tolist(), hands_score.tolist()
    xs, ys = [], []
    for points, scores, weights in zip(all_points, all_scores, products):
        for edge, (a, b) in enumerate(HAND_EDGES):
            x1, y1 = int(float(points[a][0]) * width), int(float(points[a][1]) * height)
            x2, y2 = int(float(points[b][0]) * width), int(float(points[b][1]) * height)
            weight = int(float(weights[edge]) * 255)
            if x1 > EDGE_EPS and y1 > EDGE_EPS and x2 > EDGE_EPS and y2 > EDGE_EPS:
                # An RGB triple written into the BGR canvas, and OpenCV rounds the floats.
                color = tuple(channel * weight for channel in HAND_RAINBOW[edge])
                cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
                xs += (x1, x2)
                ys += (y1, y2)

        for point, point_score in zip(points, scores):
            x, y = int(float(point[0]) * width), int(float(point[1]) * height)
            if x > EDGE_EPS and y > EDGE_EPS:
                cv2.circle(canvas, (x, y), 4, (0, 0, int(float(point_score) * 255)), thickness=-1)
                xs.append(x)
                ys.append(y)
    if extent is not None:
        extent.add(xs, ys, 4 + _SLACK)  # joints' radius; the bones reach 2 px past their ends


def _draw_face(canvas: np.ndarray, faces, faces_score, extent: _Extent | None) -> None:
    height, width = canvas.shape[:2]
    count = min(len(faces), len(faces_score))
    if count == 0:
        return
    xs, ys = [], []
    for points, scores in zip(np.asarray(faces)[:count].tolist(), np.asarray(faces_score)[:count].tolist()):
        for point, point_score in zip(points, scores):
            x, y = int(float(point[0]) * width), int(float(point[1]) * height)
            grey = int(float(point_score) * 255)
            if x > EDGE_EPS and y > EDGE_EPS:
                cv2.circle(canvas, (x, y), 3, (grey, grey, grey), thickness=-1)
                xs.append(x)
                ys.append(y)
    if extent is not None:
        extent.add(xs, ys, 3 + _SLACK)


_canvases = threading.local()


def _blank_canvas(shape: tuple[int, int, int]) -> np.ndarray:
    """A black canvas of `shape`, kept per thread: allocating (and page-faulting) ~25 MB
    per frame costs more than drawing. The caller clears what it drew before returning."""
    canvas = getattr(_canvases, "canvas", None)
    if canvas is None or canvas.shape != shape:
        canvas = np.zeros(shape, dtype=np.uint8)
        _canvases.canvas = canvas
    return canvas


# `_resize` keeps this many output pixels of black around the drawing, so OpenCV's edge
# handling and the remainders of its SIMD loops (the last elements of a row, which OpenCV
# may round differently from the SIMD body) only ever see black there.
_ROI_PAD = 24
# Column offsets of the resized box are multiples of this many pixels (times 3 channels a
# multiple of every SIMD width up to 512 bits), so a box that reaches the right edge splits
# its rows into SIMD blocks and remainder exactly as the whole image does.
_ROI_COLUMN_ALIGN = 64


@functools.lru_cache(maxsize=64)
def _resize_unit(source: int, target: int) -> int | None:
    """Output pixels per block whose source pixels OpenCV's bilinear resize computes with
    the very same coordinates and weights whether it resizes the whole axis or a block-aligned
    part of it; None where no such block exists (then the whole canvas is resized).

    OpenCV maps output pixel d to source x = (d + 0.5) * scale - 0.5 in double, rounded to
    float32, and takes floor and fraction. A part starting at output pixel k * unit gives
    the same values shifted by a whole number of source pixels iff that arithmetic is exact:
    scale = source / target must be a binary fraction (target / gcd a power of two, e.g.
    2160/720 = 3, 2160/768 = 45/16) with few enough bits for float32.
    """
    if target >= source:  # upscaling clamps at the left edge: not worth handling
        return None
    divisor = math.gcd(source, target)
    unit = target // divisor
    if unit & (unit - 1):
        return None
    scale = 1.0 / (target / source)  # as OpenCV derives it from the two sizes
    if scale != (source // divisor) / unit:
        return None
    coordinates = (np.arange(target) + 0.5) * scale - 0.5
    if not np.array_equal(coordinates.astype(np.float32).astype(np.float64), coordinates):
        return None
    return unit


def _box_along(low: int, high: int, source: int, target: int, align: int) -> tuple[int, int, int, int] | None:
    """Output span [d0, d1) and canvas span [s0, s1) covering canvas pixels [low, high)
    with `_ROI_PAD` black output pixels on both sides, or None to resize the whole axis."""
    unit = _resize_unit(source, target)
    if unit is None:
        return None
    step = math.lcm(unit, align)
    d0 = max(0, (low * target // source - _ROI_PAD) // step * step)
    d1 = -(-high * target // source) + _ROI_PAD
    d1 = target if d1 >= target else -(-d1 // unit) * unit  # target is a multiple of unit
    return d0, d1, d0 * source // target, d1 * source // target


def _resize(canvas: np.ndarray, box: tuple[int, int, int, int] | None, height: int, width: int) -> np.ndarray:
    """`cv2.resize(canvas, (width, height))` as RGB, resizing only the part around `box`
    (the canvas is black outside it) where that gives the identical pixels."""
    if box is None:
        return np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    columns = _box_along(x0, x1, canvas.shape[1], width, _ROI_COLUMN_ALIGN)
    rows = _box_along(y0, y1, canvas.shape[0], height, 1)
    if columns is None or rows is None:
        return cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)
    dx0, dx1, sx0, sx1 = columns
    dy0, dy1, sy0, sy1 = rows
    image = np.zeros((height, width, 3), dtype=np.uint8)
    part = cv2.resize(canvas[sy0:sy1, sx0:sx1], (dx1 - dx0, dy1 - dy0))
    # Converted straight into its place in the output (a view OpenCV writes through).
    cv2.cvtColor(part, cv2.COLOR_BGR2RGB, dst=image[dy0:dy1, dx0:dx1])
    return image


def draw_pose(pose: "dict | FramePose", height: int, width: int) -> np.ndarray:
    """The skeleton image (height, width, 3) uint8 RGB of one frame's pose."""
    if isinstance(pose, FramePose):
        pose = pose_to_dict(pose)
    bodies = pose["bodies"]
    candidate, subset, score = _leaf(bodies["candidate"]), _leaf(bodies["subset"]), _leaf(bodies["score"])
    hands, hands_score = _leaf(pose["hands"]), _leaf(pose["hands_score"])
    faces, faces_score = _leaf(pose["faces"]), _leaf(pose["faces_score"])

    # Drawn at a fixed resolution so stroke widths are the same fraction of the frame
    # whatever the output size.
    short_side = min(height, width)
    scale = CANVAS_SHORT_SIDE / short_side if short_side != CANVAS_SHORT_SIDE else 1
    canvas = _blank_canvas((int(height * scale), int(width * scale), 3))
    extent = _Extent()
    try:
        _draw_limbs(canvas, candidate, subset, score, extent)
        _draw_joints(canvas, candidate, subset, score, extent)
        _draw_hands(canvas, hands, hands_score, extent)
        _draw_face(canvas, faces, faces_score, extent)
        box = extent.clipped(*canvas.shape[:2])
        # OpenCV's default bilinear filter, as in training, not an area filter: a strong
        # downscale samples the canvas sparsely, so strokes alias and small dots can vanish.
        image = _resize(canvas, box, height, width)
    except BaseException:
        _canvases.canvas = None  # may hold drawing outside the extent: never reuse it
        raise
    if box is not None:
        x0, y0, x1, y1 = box
        canvas[y0:y1, x0:x1] = 0
    return image


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
    drawn = skeleton.any(axis=2)
    # Only the skeleton's pixels are converted and blended (a few percent of the frame),
    # with the same float32 arithmetic per pixel as blending the whole frame.
    blended = image[drawn].astype(np.float32) * (1.0 - alpha) + skeleton[drawn].astype(np.float32) * alpha
    result = image.copy()
    result[drawn] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result


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
