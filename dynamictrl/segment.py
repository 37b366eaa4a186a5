"""Reference masks for the Mask variants with Segment Anything (SAM, `segment-anything`).

The Mask variants of DynamiCtrl were trained on references whose background
(`mask_background`) or clothing (`mask_clothing`) is set to black. This module makes
those masks: interactively (clicks and boxes, `Segmenter.predict`) or from a DWPose
`FramePose` (`person_mask`, `background_mask`, `clothing_mask`), then cleans them
(`clean_mask`) and blacks the region out (`apply_mask`).

Model and checkpoints
    `Segmenter` wraps `segment_anything.SamPredictor` around ViT-B by default (ViT-L
    and ViT-H selectable). The official checkpoints exist only on Meta's CDN
    (dl.fbaipublicfiles.com/segment_anything/): the hub's `facebook/sam-vit-*` repos
    are a transformers-format conversion, and hub copies of the `.pth` files are
    personal re-uploads with no guarantee of staying up or staying identical. So
    `dynamictrl.weights.resolve_sam` downloads the official URL over plain HTTPS
    (progress bar, HTTP Range resume) into `weights/sam/<official filename>` and checks
    the pinned byte size and SHA-256 before the file is used. Loading never unpickles:
    `torch.load(..., weights_only=True)` into a model built from
    `sam_model_registry[kind](checkpoint=None)` (on the meta device, so the random
    initialisation of up to 640M parameters is skipped).

Interactive use
    The image encoder (the expensive part: ~0.1 s for ViT-B on a GPU, seconds on a CPU)
    runs once per image; its embedding is kept in a small LRU cache keyed by a hash of
    the pixels, so each further click costs only the prompt encoder and mask decoder.
"""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import weights
from .images import to_rgb
from .pose.types import VISIBLE_SCORE, FramePose, PersonPose
from .settings import MASK_MODES

SAM_KINDS = ("vit_b", "vit_l", "vit_h")
_VARIANTS = {"background": "mask_background", "clothing": "mask_clothing"}
# The pixel normalisation of every released SAM (the registry's constants). Sam keeps
# these as non-persistent buffers, so they are not in the checkpoints.
_SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
_SAM_PIXEL_STD = (58.395, 57.12, 57.375)


# ---------------------------------------------------------------------------------------
# Image input


def image_key(rgb: np.ndarray) -> str:
    """Identity of an image for the embedding cache: SHA-1 of its shape and pixels."""
    digest = hashlib.sha1(repr(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).reshape(-1).data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Prompts


def _check_points(points, width: int, height: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(N, 2) float coordinates and (N,) int labels, or (None, None) for no points."""
    rows = [tuple(p) for p in (points if points is not None else ())]
    if not rows:
        return None, None
    coords, labels = [], []
    for row in rows:
        if len(row) != 3:
            raise ValueError(f"Each point must be (x, y, label), got {row!r}.")
        x, y, label = float(row[0]), float(row[1]), row[2]
        if label not in (0, 1):  # also accepts True/False
            raise ValueError(f"Point labels must be 1 (include) or 0 (exclude), got {label!r}.")
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
            raise ValueError(
                f"Point ({x:g}, {y:g}) lies outside the image, which is {width}x{height} (width x height); "
                f"points are pixel coordinates with 0 <= x <= {width} and 0 <= y <= {height}."
            )
        coords.append((x, y))
        labels.append(int(label))
    return np.array(coords, dtype=np.float64), np.array(labels, dtype=np.int64)


def _check_box(box, width: int, height: int) -> np.ndarray | None:
    if box is None:
        return None
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,):
        raise ValueError(f"A box must be (x0, y0, x1, y1), got {box!r}.")
    x0, y0, x1, y1 = values
    inside = np.isfinite(values).all() and 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    if not inside:
        raise ValueError(
            f"Box {tuple(round(float(v), 2) for v in values)} is not a box inside the image, which is "
            f"{width}x{height} (width x height); use pixel coordinates with 0 <= x0 < x1 <= {width} and "
            f"0 <= y0 < y1 <= {height}."
        )
    return values


# ---------------------------------------------------------------------------------------
# Model loading


def load_sam(
    kind: str = "vit_b",
    checkpoint: str | Path | None = None,
    weights_dir: str | Path | None = None,
    local_files_only: bool = False,
    build: Callable | None = None,
):
    """A SAM model in eval mode on the CPU, from `checkpoint` or the official file that
    `weights.resolve_sam(kind)` finds (or downloads).

    `build(checkpoint=None)` returns the uninitialised architecture (default:
    `sam_model_registry[kind]`). The state dict is read with `weights_only=True` (plain
    tensors only, no pickled code) and must match the architecture exactly.
    """
    import torch
    from segment_anything import sam_model_registry

    if kind not in SAM_KINDS:
        raise ValueError(f"Unknown SAM model {kind!r}; use one of {', '.join(SAM_KINDS)}.")
    path = Path(checkpoint) if checkpoint is not None else weights.resolve_sam(kind, weights_dir, local_files_only)
    if not path.is_file():
        raise weights.WeightsNotFoundError(
            f"SAM checkpoint not found: {path}. Official files:  {weights.sam_download_command(kind, weights_dir)}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or pickled-code files
        raise ValueError(f"{path} could not be read as a SAM checkpoint of plain tensors ({error}).") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # some fine-tuning scripts nest the weights one level down
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    build = build or sam_model_registry[kind]
    # Built on the meta device: no memory and no random initialisation (8 s for ViT-H on
    # a small CPU), then the checkpoint's tensors are assigned in place of the empty ones.
    with torch.device("meta"):
        model = build(checkpoint=None)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit the SAM {kind} architecture (a checkpoint of another size? "
            f"{weights.sam_checkpoint(kind).filename} is the {kind} file): {str(error)[:500]}"
        ) from error
    # The only tensors not in a checkpoint: the non-persistent pixel normalisation.
    model.register_buffer("pixel_mean", torch.tensor(_SAM_PIXEL_MEAN).view(-1, 1, 1), persistent=False)
    model.register_buffer("pixel_std", torch.tensor(_SAM_PIXEL_STD).view(-1, 1, 1), persistent=False)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{path} left these SAM tensors uninitialised: {', '.join(left[:5])}.")
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------
# Segmenter


@dataclass
class MaskResult:
    mask: np.ndarray  # (H, W) bool, the image's size
    score: float  # SAM's predicted IoU of this mask
    logits: np.ndarray  # (256, 256) float32 low-resolution logits: pass back as `previous` to refine
    image_key: str  # which image it belongs to (refining on another image is refused)
    scores: np.ndarray  # predicted IoU of every candidate (3 for an ambiguous prompt, else 1)


@dataclass
class SegmenterStats:
    encoder_runs: int = 0  # image-encoder passes (one per new image)
    cache_hits: int = 0  # images whose embedding came from the cache
    decoder_runs: int = 0  # prompt encoder + mask decoder passes (one per predict)


@dataclass
class _Embedding:
    features: object  # torch.Tensor (1, C, h, w), kept on the CPU
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class Segmenter:
    """SAM with an embedding cache, for clicks, boxes and pose-driven masks.

    `Segmenter()` loads ViT-B from `weights/sam/` (or downloads it);
    `Segmenter(kind="vit_h")` the largest; `Segmenter(model)` wraps an already built
    `segment_anything.modeling.Sam`. For the model manager it exposes `components`
    (the SAM module), so `manager.use(name)` moves it between devices like the other
    models; see `register_segmenter`.
    """

    def __init__(
        self,
        model=None,
        kind: str = "vit_b",
        *,
        checkpoint: str | Path | None = None,
        device: str | None = None,
        weights_dir: str | Path | None = None,
        local_files_only: bool = False,
        cache_size: int = 4,
        build: Callable | None = None,
    ):
        import torch
        from segment_anything import SamPredictor

        if model is None:
            model = load_sam(kind, checkpoint, weights_dir, local_files_only, build)
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}.")
        self.kind = kind
        self.model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.predictor = SamPredictor(self.model)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._current: str | None = None  # key of the image set on the predictor
        # The predictor holds one image at a time: setting it and decoding must not
        # interleave between threads (the app may serve two clicks at once).
        self._lock = threading.RLock()
        self.stats = SegmenterStats()

    @property
    def device(self):
        return self.model.device

    @property
    def components(self) -> dict:
        """For ModelManager: the torch module(s) to move, offload and count."""
        return {"sam": self.model}

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._current = None
            self.predictor.reset_image()

    # -- embedding cache ------------------------------------------------------------------

    def _set_image(self, rgb: np.ndarray) -> str:
        """Makes `rgb` the predictor's image, computing its embedding only if it is not
        cached. Returns the image key."""
        key = image_key(rgb)
        predictor = self.predictor
        if key != self._current or not predictor.is_image_set:
            cached = self._cache.get(key)
            if cached is None:
                predictor.set_image(rgb)
                self.stats.encoder_runs += 1
                # Cached on the CPU: 4 MB per ViT image, and valid wherever the manager
                # moves the model next.
                cached = _Embedding(predictor.features.detach().cpu(), predictor.original_size, predictor.input_size)
                self._cache[key] = cached
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                predictor.reset_image()
                predictor.features = cached.features
                predictor.original_size = cached.original_size
                predictor.input_size = cached.input_size
                predictor.is_image_set = True
            self._current = key
        if predictor.features.device != self.device:  # the model moved since (manager offload)
            predictor.features = predictor.features.to(self.device)
        return key

    def embed(self, image) -> str:
        """Computes (or finds) the embedding of `image` ahead of the first click."""
        rgb = to_rgb(image)
        with self._lock:
            return self._set_image(rgb)

    # -- prompts --------------------------------------------------------------------------

    def predict(
        self,
        image,
        points: Iterable = (),
        box=None,
        previous: MaskResult | None = None,
        multimask: bool | None = None,
    ) -> MaskResult:
        """One mask from clicks and/or a box.

        points: (x, y, label) in image pixels, label 1 = part of the object, 0 = not.
        box: (x0, y0, x1, y1) in image pixels. previous: the result of the last call on
        the same image; its low-resolution logits seed this prediction (refinement).
        multimask: ask SAM for three candidates and keep the one with the best predicted
        IoU; by default only for a single click without a box, the ambiguous case SAM's
        multi-output head exists for (more prompts pin the object down, and one output
        is then the better one).
        """
        rgb = to_rgb(image)
        height, width = rgb.shape[:2]
        coords, labels = _check_points(points, width, height)
        box_array = _check_box(box, width, height)
        if coords is None and box_array is None:
            raise ValueError("Give at least one point (x, y, label) or a box (x0, y0, x1, y1).")
        if multimask is None:
            multimask = box_array is None and len(coords) == 1
        with self._lock:
            key = self._set_image(rgb)
            mask_input = None
            if previous is not None:
                if previous.image_key != key:
                    raise ValueError("`previous` is a mask of another image; refine only masks of this image.")
                mask_input = np.asarray(previous.logits, dtype=np.float32)[None]
            masks, scores, logits = self.predictor.predict(
                point_coords=coords,
                point_labels=labels,
                box=box_array,
                mask_input=mask_input,
                multimask_output=bool(multimask),
            )
            self.stats.decoder_runs += 1
        best = int(np.argmax(scores))
        return MaskResult(
            mask=np.asarray(masks[best], dtype=bool),
            score=float(scores[best]),
            logits=np.asarray(logits[best], dtype=np.float32),
            image_key=key,
            scores=np.asarray(scores, dtype=np.float32),
        )

    # -- masks from a pose ----------------------------------------------------------------

    def person_mask(self, image, pose: FramePose, people: str | int = "all") -> np.ndarray:
        """(H, W) bool: the people of `pose`, each segmented from its detector box.

        people: "all" (default) unions every detected person, so no one in the
        reference is blacked out as "background" by accident; "largest" keeps the person
        with the largest box; an int picks `pose.people[i]`.
        """
        rgb = to_rgb(image)
        height, width = rgb.shape[:2]
        mask = np.zeros((height, width), dtype=bool)
        for person in select_people(pose, people, width, height):
            box = person_box(person, width, height)
            if box is None:
                continue
            mask |= self.predict(rgb, box=box).mask
        return mask

    def background_mask(self, image, pose: FramePose, people: str | int = "all") -> np.ndarray:
        """(H, W) bool: everything that is not a person (the `mask_background` region)."""
        return ~self.person_mask(image, pose, people)

    def clothing_mask(self, image, pose: FramePose, people: str | int = "all", margin: float = 0.2) -> np.ndarray:
        """(H, W) bool: the people minus their face and hands (the `mask_clothing` region).

        Face and hands are removed as rectangles around their keypoints (see
        `part_boxes`), so skin the generator should keep is never blacked out even
        where SAM's person outline is rough.
        """
        rgb = to_rgb(image)
        height, width = rgb.shape[:2]
        mask = self.person_mask(rgb, pose, people)
        keep = np.zeros_like(mask)
        for person in select_people(pose, people, width, height):
            keep |= boxes_to_mask(part_boxes(person, width, height, margin), (height, width))
        return mask & ~keep

    def mask_for(self, mode: str, image, pose: FramePose, people: str | int = "all") -> np.ndarray:
        """The region a Mask variant expects black: `mode` in MASK_MODES."""
        variant_for(mode)  # validates the mode
        if mode == "background":
            return self.background_mask(image, pose, people)
        return self.clothing_mask(image, pose, people)


def register_segmenter(
    manager, kind: str = "vit_b", weights_dir=None, local_files_only: bool = False, build: Callable | None = None
) -> str:
    """Registers a lazily loaded `Segmenter` as `sam.<kind>` with a `ModelManager` (loaded
    on the CPU; `with manager.use(name) as segmenter:` puts it on the GPU). Returns the name."""
    if kind not in SAM_KINDS:
        raise ValueError(f"Unknown SAM model {kind!r}; use one of {', '.join(SAM_KINDS)}.")
    name = f"sam.{kind}"
    manager.register(
        name,
        lambda: Segmenter(
            kind=kind, device="cpu", weights_dir=weights_dir, local_files_only=local_files_only, build=build
        ),
    )
    return name


# ---------------------------------------------------------------------------------------
# Pose geometry


def _check_pose_size(pose: FramePose, width: int, height: int) -> None:
    # Coordinates are normalised, so a resized copy of the image is fine; another aspect
    # ratio means the pose belongs to another picture.
    if pose.width and pose.height:
        if abs(pose.width / pose.height - width / height) > 0.02 * (width / height):
            raise ValueError(
                f"The pose was detected on a {pose.width}x{pose.height} image but this one is {width}x{height}; "
                "run the pose detector on this image."
            )


def select_people(pose: FramePose, people: str | int, width: int, height: int) -> list[PersonPose]:
    """The people a mask is made of (see `Segmenter.person_mask`); ValueError if none."""
    _check_pose_size(pose, width, height)
    if not pose.people:
        raise ValueError("No person was detected in the image; click on the person to mask it instead.")
    if people == "all":
        return list(pose.people)
    if people == "largest":

        def area(person):
            box = person_box(person, width, height)
            return 0.0 if box is None else (box[2] - box[0]) * (box[3] - box[1])

        return [max(pose.people, key=area)]
    if isinstance(people, (int, np.integer)) and not isinstance(people, bool):
        if not -len(pose.people) <= people < len(pose.people):
            raise ValueError(f"Person {people} does not exist; the pose has {len(pose.people)}.")
        return [pose.people[people]]
    raise ValueError(f"people must be 'all', 'largest' or a person index, got {people!r}.")


def _clip_box(box, width: int, height: int) -> np.ndarray | None:
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return np.array([x0, y0, x1, y1])


def person_box(person: PersonPose, width: int, height: int) -> np.ndarray | None:
    """The person's box in pixels (x0, y0, x1, y1), clipped to the image; None if it
    lies outside. The detector box as is; without one, the box of the visible body
    points grown by 10% a side (joints stop short of the head top, hands and feet)."""
    box = person.bounding_box().astype(np.float64) * np.array([width, height, width, height])
    if person.box is None:
        pad = 0.1 * np.array([box[2] - box[0], box[3] - box[1]])
        box = box + np.concatenate([-pad, pad])
    return _clip_box(box, width, height)


MIN_PART_POINTS = 3  # fewer visible keypoints say nothing reliable about a part's extent
MIN_MARGIN_PX = 4.0
HEAD_POINTS = (0, 14, 15, 16, 17)  # OpenPose nose, eyes, ears
FOREHEAD = 0.5  # the 68 face landmarks stop at the brows: grow the box up by half its height


def _points_box(points: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray | None:
    visible = points[(scores > VISIBLE_SCORE) & np.isfinite(points).all(axis=1)]
    if len(visible) < MIN_PART_POINTS:
        return None
    pixels = visible.astype(np.float64) * np.array([width, height])
    return np.concatenate([pixels.min(axis=0), pixels.max(axis=0)])


def _grow(box: np.ndarray, margin: float) -> np.ndarray:
    pad = max(margin * max(box[2] - box[0], box[3] - box[1]), MIN_MARGIN_PX)
    return box + np.array([-pad, -pad, pad, pad])


def part_boxes(person: PersonPose, width: int, height: int, margin: float = 0.2) -> list[np.ndarray]:
    """Pixel boxes of the face and both hands that a clothing mask leaves out.

    Each box spans the visible keypoints of its part (score > VISIBLE_SCORE, at least
    MIN_PART_POINTS of them), grown by `margin` x its longer side (at least
    MIN_MARGIN_PX) on every side, then clipped. The face box also takes the visible
    head points of the body (nose, eyes, ears) and is first extended upwards by
    FOREHEAD x its height, since the landmarks end at the eyebrows.
    """
    boxes = []
    face_points = np.concatenate([person.face, person.body[list(HEAD_POINTS)]])
    face_scores = np.concatenate([person.face_scores, person.body_scores[list(HEAD_POINTS)]])
    face = _points_box(face_points, face_scores, width, height)
    if face is not None:
        face[1] -= FOREHEAD * (face[3] - face[1])
        boxes.append(_grow(face, margin))
    for points, scores in ((person.left_hand, person.left_hand_scores), (person.right_hand, person.right_hand_scores)):
        hand = _points_box(points, scores, width, height)
        if hand is not None:
            boxes.append(_grow(hand, margin))
    return [clipped for box in boxes if (clipped := _clip_box(box, width, height)) is not None]


def boxes_to_mask(boxes, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool with the pixels whose centres lie inside any box (x0, y0, x1, y1)."""
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        # Pixel i covers [i, i + 1) and its centre is i + 0.5.
        c0, c1 = int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5))
        r0, r1 = int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5))
        mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask


# ---------------------------------------------------------------------------------------
# Post-processing and output


def _as_mask(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"A mask must be (H, W), got shape {mask.shape}.")
    return mask if mask.dtype == bool else mask > 0


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest True pixel of `mask`."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def clean_mask(
    mask, fill_holes_below: int | None = None, dilate_px: int = 0, remove_islands_below: int = 0
) -> np.ndarray:
    """A tidier copy of a SAM mask.

    fill_holes_below: holes (regions outside the mask, 4-connected, not touching the
    image border) smaller than this many pixels are filled; None = 0.1% of the image,
    0 = none. remove_islands_below: mask regions (8-connected) smaller than this are
    dropped (0 = none). dilate_px: grow the mask by this many pixels (exact Euclidean
    disc), or shrink it for a negative value; done last, so a dilation also covers the
    seam between a blacked-out region and the rest.
    """
    mask = _as_mask(mask).copy()
    height, width = mask.shape
    if fill_holes_below is None:
        fill_holes_below = int(0.001 * height * width)
    if fill_holes_below > 0:
        _, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
        x, y, w, h, area = (stats[:, i] for i in range(5))
        border = (x == 0) | (y == 0) | (x + w == width) | (y + h == height)
        small = (area < fill_holes_below) & ~border
        small[0] = False  # label 0 is the mask itself
        mask |= small[labels]
    if remove_islands_below > 0:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < remove_islands_below
        small[0] = False  # label 0 is the background
        mask &= ~small[labels]
    dilate_px = int(dilate_px)
    if dilate_px > 0:
        mask = _distance_to(mask) <= dilate_px
    elif dilate_px < 0:
        mask = ~(_distance_to(~mask) <= -dilate_px)
    return mask


def apply_mask(image, mask) -> np.ndarray:
    """The reference as the Mask variants were trained on it: RGB uint8 with the mask's
    region (True / non-zero) set to black."""
    rgb = to_rgb(image)
    mask = _as_mask(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]}.")
    out = rgb.copy()
    out[mask] = 0
    return out


def variant_for(mode: str) -> str:
    """The DynamiCtrl variant trained on references masked this way."""
    if mode not in _VARIANTS:
        raise ValueError(f"Unknown mask mode {mode!r}; use one of {', '.join(MASK_MODES)}.")
    return _VARIANTS[mode]
