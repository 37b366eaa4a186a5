"""Every rule a setting follows, each written once; every entry point calls these.

The numbers (defaults, ranges, choices) live on the settings dataclasses
(`dynamictrl.settings`, field metadata); this module holds the checks:

- `check_fields(settings)`: types, ranges and choices of every field, read off that metadata
  (nested option objects too).
- `check_frames`: the 4k+1 frame rule (the VAE packs 4 frames per latent after the first).
- `check_size`: width and height 16..2048 and multiples of 16 (VAE /8 x patch 2).
- `check_positional_grid`: a size the transformer's RoPE grid covers.
- `check_window`: long-video windows (4k+1, at least 5) and their overlap.
- `check_seeds`: the seeds of a variations job (1 to 8, distinct).
- `check_generate_settings` / `check_pose_settings`: all of the above for one job, plus the
  size limits of `dynamictrl.limits` (frames per job, prompt length).

Callers: `Studio` (before any model loads), `DynamiCtrlPipeline` (its own arguments),
`longvideo.plan_windows`, the training config, the Ray job schema (`serve/schema.py`),
the CLI (through `Studio`) and the app's handlers. Nothing here imports torch.
"""

import math
import numbers
import types
import typing
from dataclasses import fields, is_dataclass

from .limits import LimitError, Limits, check_prompt, how_to_raise

TEMPORAL_COMPRESSION = 4  # CogVideoX VAE: frame 0, then 4 pixel frames per latent frame
SIZE_MULTIPLE = 16  # VAE spatial /8 x transformer patch 2
MIN_SIDE = 16
MAX_SIDE = 2048  # the paper's largest is 1360x1360; beyond this the 5B model runs out of any GPU
OFFICIAL_SIZES = "768x1360, 576x1024, 1024x1024, 1360x1360"
MIN_WINDOW_FRAMES = TEMPORAL_COMPRESSION + 1  # a window holds the reference and at least one latent
MAX_VARIATIONS = 8
# The released transformer's RoPE grid covers sample_height x sample_width latents
# (transformer config, docs/reference.md): 300 x 300 latents = 2400 px a side.
RELEASED_SAMPLE_LATENTS = (300, 300)
VAE_SPATIAL = 8


# ---------------------------------------------------------------------------- field metadata
def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def value_type(annotation):
    """int, float, str, bool or list of an annotation, `None` stripped (`float | None` -> float)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return value_type(kinds[0]) if len(kinds) == 1 else None
    return typing.get_origin(annotation) or annotation


def _show(number) -> str:
    """Whole numbers in full (a seed's range has 20 digits), others short (0.05, 1e+30)."""
    return str(number) if number is None or _is_integer(number) else f"{number:g}"


def _hint(metadata) -> str:
    return f" ({metadata['hint']})" if metadata.get("hint") else ""


def check_value(name: str, value, annotation, metadata) -> None:
    """One field's value against its type and its metadata (`min`, `max`, `choices`). A
    field with a `rule` gets its type checked here and its range by that rule."""
    label = metadata.get("label", name)
    hint = _hint(metadata)
    if value is None and type(None) in typing.get_args(annotation):
        return
    choices = metadata.get("choices")
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{label} must be one of {', '.join(str(c) for c in choices)}; got {value!r}.")
        return
    kind = value_type(annotation)
    low, high = metadata.get("min"), metadata.get("max")
    if kind is int:
        if not _is_integer(value):
            raise ValueError(f"{label} must be a whole number, got {value!r}{hint}.")
    elif kind is float:
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}{hint}.")
    else:
        return
    if metadata.get("rule"):
        return
    low_, high_, value_ = _show(low), _show(high), _show(value)
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"{label} must be {low_}..{high_}, got {value_}{hint}.")
    if low is not None and value < low:
        raise ValueError(f"{label} must be at least {low_}, got {value_}{hint}.")
    if high is not None and value > high:
        raise ValueError(f"{label} must be at most {high_}, got {value_}{hint}.")


def check_fields(settings) -> None:
    """Every field of a settings dataclass (and of the option objects nested in it)
    against its type and metadata."""
    hints = typing.get_type_hints(type(settings))
    for item in fields(settings):
        value = getattr(settings, item.name)
        if is_dataclass(value) and not isinstance(value, type):
            check_fields(value)
        elif item.metadata:
            check_value(item.name, value, hints[item.name], item.metadata)


def check_setting(cls, name: str, value) -> None:
    """`value` for the field `name` of the settings class `cls`, as `check_fields` would
    judge it: for callers that hold one value, not a settings object (the pipeline's
    `pose_strength`, the app's fps field)."""
    item = next(item for item in fields(cls) if item.name == name)
    check_value(name, value, typing.get_type_hints(cls)[name], item.metadata)


# ---------------------------------------------------------------------------- structural rules
def _whole(name: str, value) -> None:
    if not _is_integer(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")


def check_frames(
    num_frames: int, name: str = "The frame count", minimum: int = 1, k: int = TEMPORAL_COMPRESSION
) -> None:
    """`num_frames` = k * n + 1 and at least `minimum` (the VAE packs frame 0 alone, then k
    frames per latent); the message offers the two nearest counts."""
    _whole(name, num_frames)
    if num_frames < minimum or (num_frames - 1) % k:
        lower = max(minimum, (num_frames - 1) // k * k + 1)
        at_least = f" and at least {minimum}" if minimum > 1 else ""
        examples = ", ".join(str(k * n + 1) for n in (8, 9, 10))
        raise ValueError(
            f"{name} must be {k}k+1{at_least} (…, {examples}, …); got {num_frames}: use {lower} or {lower + k}."
        )


def check_size(width: int, height: int, multiple: int = SIZE_MULTIPLE, max_side: int | None = MAX_SIDE) -> None:
    """Width and height whole, `MIN_SIDE..max_side` (None: no ceiling here, the positional
    grid decides) and multiples of `multiple`. Sizes are written width x height."""
    _whole("width", width)
    _whole("height", height)
    if max_side is not None and not (MIN_SIDE <= width <= max_side and MIN_SIDE <= height <= max_side):
        raise ValueError(
            f"Resolution {width}x{height} is out of range: width and height must be "
            f"{MIN_SIDE}..{max_side} (the official sizes are {OFFICIAL_SIZES})."
        )
    if width < multiple or height < multiple:
        raise ValueError(f"Resolution {width}x{height} is too small: width and height must be at least {multiple}.")
    if width % multiple or height % multiple:
        nearest = f"{max(1, round(width / multiple)) * multiple}x{max(1, round(height / multiple)) * multiple}"
        raise ValueError(f"Width and height must be multiples of {multiple}, got {width}x{height}: use e.g. {nearest}.")


def positional_grid_px(
    sample_latents: tuple[int, int] = RELEASED_SAMPLE_LATENTS, vae_spatial: int = VAE_SPATIAL
) -> tuple[int, int]:
    """(max width, max height) in pixels that a transformer's RoPE grid covers, from its
    config's (sample_height, sample_width) in latents."""
    sample_height, sample_width = sample_latents
    return sample_width * vae_spatial, sample_height * vae_spatial


def check_positional_grid(width: int, height: int, max_width: int, max_height: int) -> None:
    """The "slice" RoPE grid only covers `max_width x max_height` pixels."""
    if width > max_width or height > max_height:
        raise ValueError(
            f"{width}x{height} is larger than this model's positional grid ({max_width}x{max_height} "
            "at most); lower the resolution."
        )


def check_window(
    window_frames: int, overlap: int, overlap_name: str = "overlap", k: int = TEMPORAL_COMPRESSION
) -> None:
    """A long-video window holds the reference and whole latents (4k+1, at least 5 frames);
    `overlap` counts latent frames (k pixel frames each) shared by neighbouring windows and
    must leave each window at least one latent of its own."""
    check_frames(window_frames, "window_frames", minimum=k + 1, k=k)
    window_latents = (window_frames - 1) // k
    _whole(overlap_name, overlap)
    if not 0 <= overlap < window_latents:
        raise ValueError(
            f"{overlap_name} counts latent frames ({k} pixel frames each) and must be "
            f"0..{window_latents - 1} for window_frames={window_frames}; got {overlap}."
        )


def check_seeds(seeds) -> list[int]:
    """1 to 8 distinct whole seeds >= 0, in the order given."""
    seeds = list(seeds)
    if not 1 <= len(seeds) <= MAX_VARIATIONS:
        raise ValueError(f"Give 1 to {MAX_VARIATIONS} seeds for variations, got {len(seeds)}.")
    if any(not _is_integer(s) or s < 0 for s in seeds):
        raise ValueError(f"Seeds are whole numbers >= 0, got {seeds}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Each seed once, please: {seeds} repeats one.")
    return seeds


def check_memory_options(options) -> None:
    """`PipelineOptions`: its fields, and one weight format at a time."""
    check_fields(options)
    if options.fp8 and options.int8:
        raise ValueError("Choose either fp8 or int8 weights, not both.")


# ---------------------------------------------------------------------------- one job
def _frame_limit(num_frames: int, limits: Limits, what: str, advice: str) -> None:
    if num_frames > limits.max_frames:
        raise LimitError(
            f"{num_frames} {what} asked for; at most {limits.max_frames} are allowed per job{advice}; "
            f"{how_to_raise('max_frames')}."
        )


def check_generate_settings(settings, limits: Limits) -> None:
    """Every rule of a `GenerateSettings`, before any model or file is touched: what would
    crash deep inside the pipeline or silently give garbage (NaN, absurd counts, a frame
    count the VAE cannot pack, a size the model cannot patch, a prompt too long)."""
    check_prompt(settings.prompt, limits, "prompt")
    check_prompt(settings.negative_prompt, limits, "negative prompt")
    check_fields(settings)
    check_memory_options(settings.memory)
    _frame_limit(
        settings.num_frames,
        limits,
        "frames",
        f" ({limits.max_frames / 16:.0f} s at 16 fps). Make a shorter clip or several",
    )
    check_frames(settings.num_frames)
    check_size(settings.width, settings.height)
    check_window(settings.window_frames, settings.overlap)


def check_pose_settings(settings, limits: Limits) -> None:
    """Every rule of a `PoseSettings` (frame count, size, fps, start time, detector stride)."""
    check_fields(settings)
    _frame_limit(settings.num_frames, limits, "pose frames", ". Use fewer frames")
    frames_min = next(item for item in fields(settings) if item.name == "num_frames").metadata["min"]
    check_frames(settings.num_frames, minimum=frames_min)
    check_size(settings.width, settings.height)
    if settings.start_s > limits.max_video_seconds:
        raise ValueError(
            f"start time (start_s) must be 0..{limits.max_video_seconds:g}, got {settings.start_s:g} "
            f"seconds; {how_to_raise('max_video_seconds')}."
        )
