"""Pasting MuseTalk's generated 256x256 face back into the frame (upstream `blending.py`).

Frames are RGB uint8 (H, W, 3). Per source frame, once:

    face_large(frame, box)         -> square crop around the face box (PIL, black outside the frame)
    FaceParser.parse([...])        -> 512x512 class maps, batched by the caller
    blend_mask(labels, box, ...)   -> feathered uint8 mask of the crop's size

Per generated face: `paste_face(frame, face, box, mask, crop_box)`.

Boxes are (x1, y1, x2, y2) ints with the v1.5 extra bottom margin already applied.
"""

import cv2
import numpy as np
from PIL import Image

from .face_parsing import region_mask

EXPAND = 1.5  # v1.5 crop: 1.5x half the longer face side around the box centre
FEATHER_OFFLINE = 0.05  # blur kernel as a fraction of the crop side (inference.py, app.py)
FEATHER_REALTIME = 0.1  # realtime_inference.py blurs twice as wide

Box = tuple[int, int, int, int]


def expanded_crop_box(box: Box, expand: float = EXPAND) -> Box:
    """The square (x_s, y_s, x_e, y_e) of side 2s centred on the box, s = int(max(w, h)//2 * expand).
    It may reach outside the frame."""
    x1, y1, x2, y2 = (int(v) for v in box)
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return xc - s, yc - s, xc + s, yc + s


def feather_size(crop_side: int, fraction: float = FEATHER_OFFLINE) -> int:
    """Odd Gaussian kernel size for the mask edge: int(fraction * side // 2 * 2) + 1."""
    return int(fraction * crop_side // 2 * 2) + 1


def face_large(frame: np.ndarray, box: Box, expand: float = EXPAND) -> tuple[Image.Image, Box]:
    """The expanded square crop as an RGB PIL image (the face parser's input) and its box."""
    crop_box = expanded_crop_box(box, expand)
    # PIL pads whatever lies outside the frame with black, as upstream's parser input.
    return Image.fromarray(_rgb(frame)).crop(crop_box), crop_box


def blend_mask(
    labels: np.ndarray,
    box: Box,
    crop_box: Box,
    mode: str = "jaw",
    left_cheek_width: int = 90,
    right_cheek_width: int = 90,
    feather: float = FEATHER_OFFLINE,
    upper_boundary_ratio: float = 0.5,
) -> np.ndarray:
    """(crop height, crop width) uint8 alpha for `paste_face`: the parsed region, only inside
    the face box and below the box centre (the half MuseTalk repaints), feathered."""
    x1, y1, x2, y2 = box
    xs, ys, xe, ye = crop_box
    width, height = xe - xs, ye - ys
    region = Image.fromarray(region_mask(labels, mode, left_cheek_width, right_cheek_width))
    # Explicit BICUBIC: upstream relies on PIL's default for mode L, which is bicubic.
    region = np.asarray(region.resize((width, height), Image.Resampling.BICUBIC))

    kept = np.zeros((height, width), dtype=np.uint8)
    # Upstream crops the face box out of the mask and pastes it back: the intersection with the crop survives.
    left, top = max(x1 - xs, 0), max(y1 - ys, 0)
    right, bottom = min(x2 - xs, width), min(y2 - ys, height)
    kept[top:bottom, left:right] = region[top:bottom, left:right]
    kept[: int(height * upper_boundary_ratio)] = 0

    size = feather_size(width, feather)
    return cv2.GaussianBlur(kept, (size, size), 0)


def paste_face(frame: np.ndarray, face: np.ndarray, box: Box, mask: np.ndarray, crop_box: Box) -> np.ndarray:
    """A new frame: `face` (any size, RGB) resized to the box, alpha-blended through `mask`.

    Where the mask is 0, and outside the crop box, the result equals `frame` byte for byte;
    where it is 255 inside the box, it equals the resized face.
    """
    frame = _rgb(frame)
    x1, y1, x2, y2 = box
    xs, ys, xe, ye = crop_box
    if mask.shape != (ye - ys, xe - xs):
        raise ValueError(f"mask has shape {mask.shape}, the crop box {crop_box} needs {(ye - ys, xe - xs)}.")
    resized = cv2.resize(np.ascontiguousarray(face, dtype=np.uint8), (x2 - x1, y2 - y1))
    # Only the part of the crop box inside the frame changes, so only that part is blended
    # (upstream converts and pastes the whole frame for every output frame).
    height, width = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(xs, 0), max(ys, 0), min(xe, width), min(ye, height)
    if fx1 <= fx0 or fy1 <= fy0:
        return frame.copy()
    large = frame[fy0:fy1, fx0:fx1].copy()  # upstream's face_large, restricted to the frame
    fx, fy = x1 - fx0, y1 - fy0  # the face box in `large` coordinates
    sx0, sy0 = max(0, -fx), max(0, -fy)
    sx1, sy1 = min(resized.shape[1], large.shape[1] - fx), min(resized.shape[0], large.shape[0] - fy)
    if sx1 > sx0 and sy1 > sy0:
        large[fy + sy0 : fy + sy1, fx + sx0 : fx + sx1] = resized[sy0:sy1, sx0:sx1]
    region = Image.fromarray(frame[fy0:fy1, fx0:fx1])
    alpha = np.ascontiguousarray(mask[fy0 - ys : fy1 - ys, fx0 - xs : fx1 - xs], dtype=np.uint8)
    # PIL's masked paste is an integer alpha blend: mask 0 keeps the frame, 255 takes `large`.
    region.paste(Image.fromarray(large), (0, 0), Image.fromarray(alpha))
    out = frame.copy()
    out[fy0:fy1, fx0:fx1] = np.asarray(region)
    return out


def _rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"Expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}.")
    return np.ascontiguousarray(frame)
