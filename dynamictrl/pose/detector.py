"""DWPose whole-body pose extraction: YOLOX-L person boxes, then RTMPose (133 keypoints).

Re-implements the pre- and post-processing of the official DynamiCtrl release
(`dwpose/onnxdet.py`, `onnxpose.py`, `wholebody.py`, `dwpose_detector.py`) with
onnxruntime and the two ONNX files of `yzd-v/DWPose`, so the poses match what the model
was trained on:

- detector: letterbox to 640x640 (top-left, pad 114, `cv2.INTER_LINEAR`), YOLOX grid
  decode over strides 8/16/32, class-wise NMS (IoU 0.45, score > 0.1), then the person
  class with score > 0.3; boxes keep the NMS order (descending score);
- pose: per box, centre/size padded by 1.25 and widened to the model's aspect ratio,
  affine crop to the model input (size read from the ONNX file), normalised with the
  ImageNet mean/std, SimCC arg-max decode (split ratio 2), mapped back to the frame;
- COCO-WholeBody 133 -> OpenPose-18 body (neck inserted at 17 = mean of the shoulders,
  visible only if both shoulders score > 0.3, then mmpose -> openpose reorder); face =
  keypoints 24:92, hands = 92:113 and 113:134 of the 134-point list; all coordinates
  normalised by the frame width/height.

Frames are fed to both models in RGB order, as the official preprocessing does (its
frames come from PIL and decord). Unlike the official code, a frame without a person
gives an empty `FramePose` (the official code then runs the pose model on the whole
frame and reports that as a person; `whole_frame_if_empty=True` restores it).

For videos, `detect_video` can run the detector only every N frames and batches the
person crops of several frames into one pose-model call where the ONNX file allows it.
"""

import functools
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from .. import weights
from .types import FramePose, PersonPose

ProgressCallback = Callable[[float, str], None]

DET_FILE, POSE_FILE = weights.DWPOSE_FILES
DET_SIZE = (640, 640)  # (height, width) of the YOLOX input
DET_PAD_VALUE = 114
DET_STRIDES = (8, 16, 32)
NMS_IOU = 0.45
NMS_MIN_SCORE = 0.1
PERSON_MIN_SCORE = 0.3
PERSON_CLASS = 0
BOX_PADDING = 1.25
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT_RATIO = 2.0
NUM_WHOLEBODY = 133
NECK_MIN_SCORE = 0.3
# After the neck is inserted at 17: OpenPose slot <- mmpose slot.
OPENPOSE_SLOTS = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
MMPOSE_SLOTS = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)


# ---------------------------------------------------------------------------------------
# Detector (YOLOX) pre/post-processing


def letterbox(image: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """(3, H, W) float32 detector input and the resize ratio: the image scaled to fit,
    placed at the top-left of a canvas filled with 114."""
    ratio = min(size[0] / image.shape[0], size[1] / image.shape[1])
    new_w, new_h = max(1, int(image.shape[1] * ratio)), max(1, int(image.shape[0] * ratio))  # >= 1 for slivers
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # Straight into planar float32 (uint8 -> float32 is exact), without a padded uint8
    # canvas and a strided transpose-and-convert of all of it.
    planes = cv2.split(resized)
    if len(planes) != 3:
        raise ValueError(f"letterbox expects an (H, W, 3) image, got shape {image.shape}.")
    out = np.empty((3, size[0], size[1]), dtype=np.float32)
    out[:, new_h:] = DET_PAD_VALUE
    out[:, :new_h, new_w:] = DET_PAD_VALUE
    for channel, plane in enumerate(planes):
        out[channel, :new_h, :new_w] = plane
    return out, ratio


@functools.lru_cache(maxsize=4)
def _anchor_grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets (A, 2) int64 as (x, y), row-major per level, and strides (A, 1); read-only."""
    cells, strides = [], []
    for stride in DET_STRIDES:
        rows, cols = size[0] // stride, size[1] // stride
        ys, xs = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
        cells.append(np.stack([xs, ys], axis=1))
        strides.append(np.full((rows * cols, 1), stride, dtype=np.int64))
    cells, strides = np.concatenate(cells), np.concatenate(strides)
    cells.flags.writeable = strides.flags.writeable = False
    return cells, strides


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS, highest score first; areas use the inclusive-pixel (+1) convention."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def decode_detections(raw: np.ndarray, ratio: float, size: tuple[int, int] = DET_SIZE) -> np.ndarray:
    """Person boxes (n, 4) float64 x0, y0, x1, y1 in frame pixels, by descending score,
    from one raw YOLOX output (A, 5 + classes): cx, cy relative to the cell, log w/h,
    objectness and class probabilities (already sigmoid-ed in the ONNX file)."""
    raw = np.asarray(raw, dtype=np.float32)  # decoded in float32, like the official code
    cells, strides = _anchor_grid(size)
    if raw.shape[0] != cells.shape[0]:
        raise ValueError(
            f"detector output has {raw.shape[0]} anchors; a {size[1]}x{size[0]} input needs {cells.shape[0]}."
        )
    # Class-wise NMS keeps each class separate, and only the person class is used, so
    # running it on the person scores alone gives the same boxes in the same order.
    scores = raw[:, 4] * raw[:, 5 + PERSON_CLASS]
    candidates = scores > NMS_MIN_SCORE
    if not candidates.any():
        return np.zeros((0, 4))
    # Only the candidates' boxes are decoded: a handful of the 8400 anchors. Each row is
    # decoded on its own, with the official element-wise operations and dtypes (float32
    # + int64 cells -> float64, stored back as float32), so the values are the same.
    raw, cells, strides, scores = raw[candidates], cells[candidates], strides[candidates], scores[candidates]
    raw[:, :2] = (raw[:, :2] + cells) * strides
    raw[:, 2:4] = np.exp(raw[:, 2:4]) * strides
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([raw[:, :2] - half, raw[:, :2] + half], axis=1) / ratio
    keep = _nms(boxes, scores, NMS_IOU)
    boxes, scores = boxes[keep].astype(np.float64), scores[keep].astype(np.float64)
    return boxes[scores > PERSON_MIN_SCORE]


# ---------------------------------------------------------------------------------------
# Pose (RTMPose) pre/post-processing


def box_center_scale(box: np.ndarray, input_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre (2,) and crop size (2,) of a box: padded by 1.25, then grown along one axis
    to the model input's aspect ratio (w / h)."""
    box = np.asarray(box, dtype=np.float64)
    center = np.array([box[0] + box[2], box[1] + box[3]]) * 0.5
    w, h = (box[2] - box[0]) * BOX_PADDING, (box[3] - box[1]) * BOX_PADDING
    aspect = input_wh[0] / input_wh[1]
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def _crop_matrix(center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]) -> np.ndarray:
    """2x3 affine map from the frame to the crop, from three point pairs (centre, a point
    half a crop width above it, and that offset turned by 90 degrees) in float32, so the
    matrix is bit-identical to the official one."""

    def three_points(origin, half_width):
        points = np.zeros((3, 2), dtype=np.float32)
        points[0] = origin
        points[1] = np.asarray(origin, dtype=np.float64) + np.array([0.0, -half_width])
        offset = points[0] - points[1]
        points[2] = points[1] + np.array([-offset[1], offset[0]], dtype=np.float32)
        return points

    src = three_points(center, scale[0] * 0.5)
    dst = three_points(np.array([input_wh[0] * 0.5, input_wh[1] * 0.5]), input_wh[0] * 0.5)
    return cv2.getAffineTransform(src, dst)


# (3, 256): (value - mean) / std per channel, computed in float64 and rounded to float32
# once, as the official code's float64 normalisation followed by onnxruntime's cast.
_NORMALISED = np.ascontiguousarray(((np.arange(256.0)[:, None] - PIXEL_MEAN) / PIXEL_STD).T.astype(np.float32))
# The same tables as OpenCV lookup tables (256, 1), one per channel.
_NORMALISED_LUTS = [np.ascontiguousarray(table[:, None]) for table in _NORMALISED]


def crop_person(image: np.ndarray, box: np.ndarray, input_wh: tuple[int, int]):
    """(3, h, w) float32 normalised pose-model input for one box, with its centre and
    crop size (used to map keypoints back)."""
    center, scale = box_center_scale(box, input_wh)
    matrix = _crop_matrix(center, scale, input_wh)
    crop = cv2.warpAffine(image, matrix, (int(input_wh[0]), int(input_wh[1])), flags=cv2.INTER_LINEAR)
    # Table lookup: the same float32 values as normalising in float64, several times
    # faster; each channel plane is looked up straight into its slice of the output.
    out = np.empty((3, crop.shape[0], crop.shape[1]), dtype=np.float32)
    for channel, plane in enumerate(cv2.split(crop)):
        cv2.LUT(plane, _NORMALISED_LUTS[channel], dst=out[channel])
    return out, center, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, K, 2) float32 in model-input pixels and scores (N, K): the arg-max
    bins divided by the split ratio; score = the smaller of the two maxima; keypoints
    whose score is <= 0 get location -1 (before the division, as officially)."""
    x_bins = simcc_x.argmax(axis=-1)
    y_bins = simcc_y.argmax(axis=-1)
    locations = np.stack([x_bins, y_bins], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
    locations[scores <= 0.0] = -1
    return locations / SIMCC_SPLIT_RATIO, scores


def keypoints_to_frame(
    locations: np.ndarray, center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]
) -> np.ndarray:
    """Model-input pixel coordinates (K, 2) of one crop -> frame pixels (float64)."""
    return locations / np.asarray(input_wh) * scale + center - scale / 2


def wholebody_to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 133, 2), (N, 133) COCO-WholeBody -> (N, 134, 2), (N, 134): neck (mean of the
    shoulders; score 1 if both shoulders score > 0.3 else 0) inserted at 17, then the
    first 18 points put in OpenPose order. Face 24:92, hands 92:113 / 113:134."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    neck = (keypoints[:, 5] + keypoints[:, 6]) / 2
    neck_score = ((scores[:, 5] > NECK_MIN_SCORE) & (scores[:, 6] > NECK_MIN_SCORE)).astype(np.float64)
    keypoints = np.insert(keypoints, 17, neck, axis=1)
    scores = np.insert(scores, 17, neck_score, axis=1)
    keypoints[:, OPENPOSE_SLOTS] = keypoints[:, MMPOSE_SLOTS]
    scores[:, OPENPOSE_SLOTS] = scores[:, MMPOSE_SLOTS]
    return keypoints, scores


def frame_pose_from_keypoints(
    keypoints: np.ndarray, scores: np.ndarray, boxes: np.ndarray | None, height: int, width: int
) -> FramePose:
    """A `FramePose` from OpenPose-ordered (N, 134, 2) frame-pixel keypoints."""
    size = np.array([width, height], dtype=np.float64)
    people = []
    for i in range(len(keypoints)):
        points = keypoints[i] / size
        people.append(
            PersonPose(
                body=points[:18],
                body_scores=scores[i, :18],
                face=points[FACE],
                face_scores=scores[i, FACE],
                left_hand=points[LEFT_HAND],
                left_hand_scores=scores[i, LEFT_HAND],
                right_hand=points[RIGHT_HAND],
                right_hand_scores=scores[i, RIGHT_HAND],
                box=None if boxes is None else np.asarray(boxes[i], dtype=np.float64) / np.tile(size, 2),
            )
        )
    return FramePose(people, height=height, width=width)


def check_image(image, what: str = "image") -> np.ndarray:
    """The image as a contiguous (H, W, 3) uint8 array, or a ValueError naming the fix."""
    if not isinstance(image, np.ndarray):
        if hasattr(image, "convert"):  # a PIL image
            image = np.asarray(image.convert("RGB"))
        else:
            raise ValueError(
                f"The {what} must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}; "
                "use np.asarray(PIL.Image.open(path).convert('RGB'))."
            )
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(
            f"The {what} must have shape (H, W, 3) RGB, got {image.shape}; convert grayscale or RGBA "
            "images with PIL's .convert('RGB') (or cv2.cvtColor) first."
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"The {what} must be uint8 (0-255), got {image.dtype}; for floats in [0, 1] use "
            "(np.clip(image, 0, 1) * 255).round().astype(np.uint8)."
        )
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------------------------------
# ONNX sessions


@dataclass
class DetectorStats:
    """Counters and time per stage, accumulated over calls (for benchmarks and tests)."""

    detector_runs: int = 0
    pose_runs: int = 0  # pose-model session calls
    crops: int = 0
    detect_seconds: float = 0.0  # letterbox + detector + decode
    pose_seconds: float = 0.0  # crops + pose model + decode + conversion

    def reset(self):
        self.__init__()


def _providers(device) -> tuple[list, str]:
    available = ort.get_available_providers()
    device = None if device is None else str(device)
    if device is None or device == "auto":
        use_cuda, device_id = "CUDAExecutionProvider" in available, 0
    elif device == "cpu":
        use_cuda, device_id = False, 0
    elif device.startswith("cuda"):
        device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        use_cuda = "CUDAExecutionProvider" in available
        if not use_cuda:
            warnings.warn(
                f"device={device!r} was asked for but onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); DWPose runs on the CPU. Install onnxruntime-gpu for CUDA.",
                stacklevel=3,
            )
    else:
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if use_cuda:
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"], f"cuda:{device_id}"
    return ["CPUExecutionProvider"], "cpu"


def _require_file(path: Path, role: str):
    if not path.is_file():
        command = weights.download_command(weights.DWPOSE_REPO, None, weights.DWPOSE_FILES)
        raise weights.WeightsNotFoundError(
            f"DWPose {role} model not found: {path}. Fetch the official files with:  {command}  "
            f"(or copy them from https://huggingface.co/{weights.DWPOSE_REPO})."
        )


def _open_session(path: Path, providers, num_threads: int | None, role: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise ValueError(f"{path} could not be loaded as the DWPose {role} ONNX model ({error}).") from error


def _describe(values) -> str:
    return ", ".join(f"{v.name} {list(v.shape)}" for v in values) or "none"


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_detector(session: ort.InferenceSession, path: Path):
    inputs, outputs = session.get_inputs(), session.get_outputs()
    ok = len(inputs) == 1 and len(inputs[0].shape) == 4 and len(outputs) >= 1 and len(outputs[0].shape) == 3
    if ok:
        _, channels, height, width = (_static(d) for d in inputs[0].shape)
        batch, anchors, fields = (_static(d) for d in outputs[0].shape)
        expected_anchors = sum((DET_SIZE[0] // s) * (DET_SIZE[1] // s) for s in DET_STRIDES)
        ok = (
            channels in (None, 3)
            and height in (None, DET_SIZE[0])
            and width in (None, DET_SIZE[1])
            and batch in (None, 1)
            and anchors in (None, expected_anchors)
            and (fields is None or fields >= 6)
        )
    if not ok:
        raise ValueError(
            f"{path} does not look like the DWPose person detector ({DET_FILE}): expected one input "
            f"(1, 3, {DET_SIZE[0]}, {DET_SIZE[1]}) and an output (1, 8400, 5 + classes) of raw YOLOX predictions; "
            f"got inputs [{_describe(inputs)}], outputs [{_describe(outputs)}]."
        )


def _check_pose(session: ort.InferenceSession, path: Path) -> tuple[tuple[int, int], int | None]:
    """Returns the model input size (w, h) and its fixed batch size (None if dynamic)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    ok = len(inputs) == 1 and len(inputs[0].shape) == 4 and len(outputs) >= 2
    ok = ok and all(len(o.shape) == 3 for o in outputs[:2])
    if ok:
        batch, channels, height, width = (_static(d) for d in inputs[0].shape)
        x_batch, x_points, x_bins = (_static(d) for d in outputs[0].shape)
        y_batch, y_points, y_bins = (_static(d) for d in outputs[1].shape)
        ok = (
            height is not None
            and width is not None
            and channels in (None, 3)
            and x_points in (None, NUM_WHOLEBODY)
            and y_points in (None, NUM_WHOLEBODY)
            and x_bins in (None, int(width * SIMCC_SPLIT_RATIO))
            and y_bins in (None, int(height * SIMCC_SPLIT_RATIO))
        )
    if not ok:
        raise ValueError(
            f"{path} does not look like the DWPose whole-body pose model ({POSE_FILE}): expected one input "
            f"(N, 3, H, W) with fixed H and W (384, 288 for DWPose) and two outputs simcc_x (N, {NUM_WHOLEBODY}, 2W), "
            f"simcc_y (N, {NUM_WHOLEBODY}, 2H); got inputs [{_describe(inputs)}], outputs [{_describe(outputs)}]."
        )
    return (width, height), batch


@dataclass
class _Pending:
    """A frame whose crops wait for the pose model."""

    index: int
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) frame pixels
    centers: list
    scales: list
    first_crop: int  # position of its first crop in the crop queue


class DWPoseDetector:
    """DWPose (YOLOX-L + RTMPose whole-body) with the official pre/post-processing.

    `detector(image)` takes an RGB uint8 (H, W, 3) array and returns a `FramePose`
    (people in detector order, coordinates normalised by width/height).
    """

    def __init__(
        self,
        det_model_path: str | Path,
        pose_model_path: str | Path,
        device: str | None = None,
        num_threads: int | None = None,
        whole_frame_if_empty: bool = False,
    ):
        self.det_model_path = Path(det_model_path)
        self.pose_model_path = Path(pose_model_path)
        _require_file(self.det_model_path, "detector")
        _require_file(self.pose_model_path, "pose")
        providers, self.device = _providers(device)
        self._det = _open_session(self.det_model_path, providers, num_threads, "detector")
        _check_detector(self._det, self.det_model_path)
        self._pose = _open_session(self.pose_model_path, providers, num_threads, "pose")
        self.pose_input_size, self.pose_batch = _check_pose(self._pose, self.pose_model_path)
        self._det_input = self._det.get_inputs()[0].name
        self._pose_input = self._pose.get_inputs()[0].name
        self._pose_outputs = [o.name for o in self._pose.get_outputs()[:2]]
        self.whole_frame_if_empty = whole_frame_if_empty
        self.stats = DetectorStats()

    @classmethod
    def from_pretrained(
        cls,
        weights_dir: str | Path | None = None,
        local_files_only: bool = False,
        device: str | None = None,
        **kwargs,
    ) -> "DWPoseDetector":
        """Loads `weights/DWPose/{yolox_l,dw-ll_ucoco_384}.onnx`, downloading just those two
        files from `yzd-v/DWPose` if they are missing (offline: an error naming the command)."""
        folder = weights.resolve_files(weights.DWPOSE_REPO, weights.DWPOSE_FILES, weights_dir, local_files_only)
        return cls(folder / DET_FILE, folder / POSE_FILE, device=device, **kwargs)

    @property
    def providers(self) -> list[str]:
        return self._det.get_providers()

    @property
    def batched_pose(self) -> bool:
        """True if the pose model takes several crops per call."""
        return self.pose_batch is None or self.pose_batch > 1

    # -- stages ---------------------------------------------------------------------------

    def _detect_boxes(self, image: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        tensor, ratio = letterbox(image)
        raw = self._det.run(None, {self._det_input: tensor[None]})[0]
        boxes = decode_detections(raw[0], ratio)
        if len(boxes) == 0 and self.whole_frame_if_empty:
            boxes = np.array([[0.0, 0.0, image.shape[1], image.shape[0]]])
        self.stats.detector_runs += 1
        self.stats.detect_seconds += time.perf_counter() - start
        return boxes

    def _run_pose(self, crops: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Pose model over (N, 3, h, w) crops -> (N, 133, 2) input-pixel keypoints, scores."""
        if self.pose_batch is not None:
            chunk = self.pose_batch
        else:
            chunk = max(1, int(batch_size))
        locations, scores = [], []
        for start in range(0, len(crops), chunk):
            part = crops[start : start + chunk]
            count = len(part)
            if self.pose_batch is not None and count < self.pose_batch:  # a fixed batch: pad with zeros
                part = np.concatenate([part, np.zeros((self.pose_batch - count, *part.shape[1:]), part.dtype)])
            simcc_x, simcc_y = self._pose.run(self._pose_outputs, {self._pose_input: part})
            self.stats.pose_runs += 1
            loc, score = decode_simcc(simcc_x[:count], simcc_y[:count])
            locations.append(loc)
            scores.append(score)
        return np.concatenate(locations), np.concatenate(scores)

    def _finish(self, pending: list[_Pending], crops: list, batch_size: int, results: list):
        if crops:
            locations, scores = self._run_pose(np.stack(crops), batch_size)
        for frame in pending:
            n = len(frame.boxes)
            if n == 0:
                results[frame.index] = FramePose([], height=frame.height, width=frame.width)
                continue
            rows = slice(frame.first_crop, frame.first_crop + n)
            points = np.stack(
                [
                    keypoints_to_frame(loc, frame.centers[i], frame.scales[i], self.pose_input_size)
                    for i, loc in enumerate(locations[rows])
                ]
            )
            body, body_scores = wholebody_to_openpose(points, scores[rows])
            results[frame.index] = frame_pose_from_keypoints(body, body_scores, frame.boxes, frame.height, frame.width)

    # -- public API -----------------------------------------------------------------------

    def __call__(self, image: np.ndarray) -> FramePose:
        return self.detect_video([image])[0]

    def detect_video(
        self,
        frames: Iterable[np.ndarray],
        detect_every: int = 1,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
        total: int | None = None,
    ) -> list[FramePose]:
        """Poses of every frame (RGB uint8 (H, W, 3) each).

        `frames` may be any iterable (a decoder's frame stream): each frame is read once,
        in order, and only its person crops are kept until its batch is run, so a long
        video is never held whole. `total`: the frame count for progress messages when
        `frames` has no `len` (an estimate is fine).

        The detector runs on frames 0, N, 2N, ... (`detect_every=N`); the frames between
        reuse the last boxes found (scaled if a frame has another size). Person crops of
        consecutive frames are sent to the pose model `batch_size` at a time when its
        ONNX file has a dynamic batch dimension (one per call if it is fixed at 1).
        `progress(fraction, message)` is called as frames complete.
        """
        detect_every, batch_size = int(detect_every), int(batch_size)
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        # Batches are cut exactly where they were for a list (the last one at its last
        # frame); a stream without `len` flushes its last batch when it ends.
        length = len(frames) if hasattr(frames, "__len__") else None
        total = length if total is None else total
        results: list[FramePose | None] = []
        pending: list[_Pending] = []
        crops: list[np.ndarray] = []
        boxes, boxes_hw = None, None
        done = 0

        def finish():
            nonlocal done, pending, crops
            start = time.perf_counter()
            self._finish(pending, crops, batch_size, results)
            self.stats.pose_seconds += time.perf_counter() - start
            done += len(pending)
            pending, crops = [], []
            if progress is not None:
                shown = max(total or 0, done)
                progress(done / shown, f"DWPose: {done}/{shown} frames")

        for index, frame in enumerate(frames):
            image = check_image(frame, "image" if length == 1 else f"frame {index}")
            results.append(None)
            height, width = image.shape[:2]
            if index % detect_every == 0 or boxes is None:
                boxes, boxes_hw = self._detect_boxes(image), (height, width)
            elif boxes_hw != (height, width):
                factor = np.array([width / boxes_hw[1], height / boxes_hw[0]] * 2)
                boxes, boxes_hw = boxes * factor, (height, width)
            start = time.perf_counter()
            pending_frame = _Pending(index, height, width, boxes, [], [], len(crops))
            for box in boxes:
                crop, center, scale = crop_person(image, box, self.pose_input_size)
                crops.append(crop)
                pending_frame.centers.append(center)
                pending_frame.scales.append(scale)
            pending.append(pending_frame)
            self.stats.crops += len(boxes)
            self.stats.pose_seconds += time.perf_counter() - start
            if len(crops) >= batch_size or index == (length or 0) - 1:
                finish()
        if pending:
            finish()
        return results
