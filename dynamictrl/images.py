"""Every image the user gives goes through here: any PIL mode, array dtype or file
becomes an (H, W, 3) uint8 RGB array, with the size checked before pixels are decoded.

Rules: 16-bit and [0, 1] float data are scaled (not clipped) to 8 bits; grayscale,
palette, CMYK are converted; transparent pixels become black, the colour the
masked-reference models read as "masked"; EXIF rotation is applied (phone photos).

Files: a regular local file (`dynamictrl.probe.local_file`: no URL, device, FIFO or
folder), in one of `IMAGE_FORMATS` (PIL's EPS reader would run Ghostscript, so formats
are allow-listed); HEIC/HEIF photos (iPhones) are read through pillow-heif, registered
with PIL on import so everything in the process (the web app's uploads too) reads them.
Every error names the file and says what to do.
"""

import warnings
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageOps

from .limits import LimitError, default_limits, how_to_raise
from .probe import IMAGE, MediaError, local_file

pillow_heif.register_heif_opener()

# PIL format ids read from files. Not EPS/PS (Ghostscript), nor formats that need
# external handlers (WMF) or hold no photo (FITS, fonts, ...).
IMAGE_FORMATS = (
    "PNG",
    "JPEG",
    "MPO",
    "WEBP",
    "GIF",
    "BMP",
    "DIB",
    "TIFF",
    "AVIF",
    "HEIF",
    "PSD",
    "TGA",
    "PPM",
    "JPEG2000",
    "ICO",
    "QOI",
)
RESAVE = "re-save it as PNG or JPEG"


def openable_formats() -> tuple[str, ...]:
    """`IMAGE_FORMATS` that this PIL build reads (all of its plugins loaded first: PIL
    loads most of them only when a file is not one of the five commonest)."""
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


class ImageError(MediaError):
    """An image file could not be used; the message names the file, the problem and the fix."""


MIN_SIDE = 16  # nothing smaller can be a useful reference (and SAM's 64x64 embedding agrees)
MAX_SIDE = 8192  # beyond this the pixels alone are 200 MB per copy; references are far smaller


def check_size(width: int, height: int, name: str = "The image") -> None:
    """ValueError unless MIN_SIDE <= width, height <= MAX_SIDE (checked before any pixel
    is decoded or copied, so a huge image is refused without allocating it)."""
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ValueError(
            f"{name} is {width}x{height} (width x height); images must be {MIN_SIDE} to {MAX_SIDE} pixels "
            f"on each side. Resize it first (the reference is used at most at 2048 px anyway)."
        )


def _div255(values: np.ndarray) -> np.ndarray:
    """round(values / 255) for products of two uint8 numbers, in integers (the rounding
    PIL uses when it blends with an alpha mask, so numpy and PIL inputs agree exactly)."""
    values = values.astype(np.uint32) + 128
    return ((values >> 8) + values) >> 8


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8 0-255 (same channels)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ValueError(f"Integer image values must be 0-255 or 0-65535, got {low}..{high}.")
        # A 16-bit file holding only 8-bit values stays as it is rather than turning black.
        peak = 65535.0 if high > 255 else 255.0
        return (array.astype(np.float64) / peak * 255.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("The image contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            # 0-255 floats are common too; guessing wrong would silently whiten the image.
            raise ValueError(
                f"Float images must hold values in [0, 1], got {low:g}..{high:g}; for 0-255 floats pass "
                "image.round().astype(np.uint8)."
            )
        return (array.astype(np.float64) * 255.0).round().astype(np.uint8)
    raise ValueError(f"Unsupported image dtype {array.dtype}; use uint8 RGB.")


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"The image must be (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, got shape {array.shape}."
        )
    array = _to_uint8(array)
    channels = array.shape[2]
    if channels in (2, 4):
        # Transparent areas become black (PIL's alpha rounding, so arrays and files agree).
        colour, alpha = array[:, :, : channels - 1], array[:, :, channels - 1 :]
        array = _div255(colour.astype(np.uint32) * alpha).astype(np.uint8)
        channels -= 1
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _pil_to_rgb(image: Image.Image, name: str = "the image") -> np.ndarray:
    """An opened PIL image of any mode as RGB uint8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        return _array_to_rgb(np.asarray(image.convert("RGBA")))
    try:
        return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, palette, 1-bit, L ...
    except OSError as error:  # pixels that fail to decode: a truncated or damaged file
        raise ImageError(
            f"Could not read the pixels of {name} ({error}): the file is incomplete or corrupt. Upload it again, or "
            f"{RESAVE}."
        ) from error
    except ValueError as error:
        if _is_chunk_bomb(error):
            raise _chunk_bomb_error(name) from None
        raise ImageError(f"Cannot convert {name}, a {image.mode} image, to RGB ({error}); {RESAVE}.") from error


def _is_chunk_bomb(error: ValueError) -> bool:
    """PIL's refusal of a PNG text or colour-profile chunk that inflates past its bound."""
    text = str(error)
    return (
        "Decompressed data too large" in text
        or "Decompressed Data Too Large" in text
        or "Too much memory used in text chunks" in text
    )


def _chunk_bomb_error(name: str) -> ImageError:
    return ImageError(
        f"{name} holds a compressed metadata chunk (text or colour profile) that inflates to more than is allowed: "
        f"it may be a decompression bomb. If it is a real picture, {RESAVE} without its metadata and try again."
    )


def check_pixels(width: int, height: int, max_pixels: int, name: str = "The image") -> None:
    """LimitError if width x height exceeds `max_pixels` (the decompression-bomb guard: a
    few KB of PNG can declare gigapixels, so the header's size is judged, not the file's)."""
    if width * height > max_pixels:
        raise LimitError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels, more than the "
            f"{max_pixels / 1e6:g} allowed. Resize it first (the reference is used at most at 2048 px); "
            f"{how_to_raise('max_image_pixels')}."
        )


def _bomb_error(name: str, error: Exception, max_pixels: int) -> LimitError:
    """PIL's own decompression-bomb refusal (raised while reading the header), in our words."""
    return LimitError(
        f"{name} declares far more pixels than allowed ({error}); images may have at most {max_pixels / 1e6:g} "
        f"megapixels and {MAX_SIDE} px a side. It may be a decompression bomb; if it is a real photo, resize it "
        f"first; {how_to_raise('max_image_pixels')}."
    )


def to_rgb(image, max_pixels: int | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a PIL image, a numpy array or a file path.

    Grayscale, palette, CMYK, 16-bit and float images are converted; alpha is composited
    onto black. The size is checked first (`check_size`, and for files and PIL images
    `check_pixels` against `max_pixels`, default `Limits.max_image_pixels`), before any
    decoding or copy. Arrays are already decoded, so only their sides are checked.
    """
    if max_pixels is None:
        max_pixels = default_limits().max_image_pixels
    if isinstance(image, (str, Path)):
        return _file_to_rgb(image, max_pixels)
    if isinstance(image, Image.Image):
        check_size(*image.size)
        check_pixels(*image.size, max_pixels)
        return _pil_to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.ndim < 2:
            raise ValueError(f"The image must be (H, W) or (H, W, C), got shape {image.shape}.")
        check_size(image.shape[1], image.shape[0])
        return _array_to_rgb(image)
    raise ValueError(f"The image must be a PIL image, a numpy array or a path, got {type(image).__name__}.")


def _file_to_rgb(image: str | Path, max_pixels: int) -> np.ndarray:
    name = Path(image).name
    path = local_file(image, IMAGE, ImageError)
    try:
        # PIL's bomb warning (between its threshold and twice it) becomes an error here:
        # a warning would let the pixels be inflated anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(
                path, formats=openable_formats()
            ) as opened:  # lazy: only the header is read until converted
                check_size(*opened.size, name=name)
                check_pixels(*opened.size, max_pixels, name=name)
                return _pil_to_rgb(ImageOps.exif_transpose(opened), name)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb_error(name, error, max_pixels) from None
    except Image.UnidentifiedImageError:
        # PIL's own message carries the full path; a server's paths are nobody's business.
        raise ImageError(
            f"Could not read the image {name} (not an image in a format accepted here: {IMAGE.accepted}, or damaged). "
            f"Upload it again, or {RESAVE}."
        ) from None
    except OSError as error:
        raise ImageError(
            f"Could not read the image {name} ({error}): the file is incomplete, corrupt or not an image. "
            f"Upload it again, or {RESAVE}."
        ) from error
    except ValueError as error:
        if _is_chunk_bomb(error):
            raise _chunk_bomb_error(name) from None
        raise


def to_rgb_image(image, max_pixels: int | None = None) -> Image.Image:
    """`to_rgb` as a PIL image."""
    return Image.fromarray(to_rgb(image, max_pixels=max_pixels))
