"""Size and speed presets (the app's menus and the CLI's --size / --speed), with a rough
GPU time for each.

Every size passes the size rules of `dynamictrl.validation` (multiples of 16, inside the
released transformer's positional grid); `fits_positional_grid` asks those rules.
"""

from dataclasses import dataclass

from .validation import (
    RELEASED_SAMPLE_LATENTS,
    SIZE_MULTIPLE,
    check_positional_grid,
    check_size,
    positional_grid_px,
)

TEXT_TOKENS = 226
HIDDEN = 3072  # 48 heads x 64


@dataclass(frozen=True)
class SizePreset:
    name: str
    label: str
    width: int
    height: int


SIZE_PRESETS = (
    SizePreset("portrait", "Portrait 768x1360 (the official size)", 768, 1360),
    SizePreset("landscape", "Landscape 1360x768", 1360, 768),
    SizePreset("square", "Square 1024x1024", 1024, 1024),
    SizePreset("portrait-draft", "Portrait draft 576x1024", 576, 1024),
    SizePreset("landscape-draft", "Landscape draft 1024x576", 1024, 576),
)


@dataclass(frozen=True)
class SpeedPreset:
    name: str
    label: str
    steps: int
    first_block_cache: float  # threshold; 0 = off


SPEED_PRESETS = (
    SpeedPreset("quality", "Quality: 25 steps (the official setting)", 25, 0.0),
    # Fewer steps, and First Block Cache skips the other blocks when the first one's
    # output barely changed since the last step (manager.apply_speed_options).
    SpeedPreset("draft", "Draft: 10 steps + first-block cache", 10, 0.05),
)
CUSTOM = "custom"


def size_preset(name: str) -> SizePreset:
    for preset in SIZE_PRESETS:
        if preset.name == name:
            return preset
    raise ValueError(f"Unknown size {name!r}; use one of {', '.join(p.name for p in SIZE_PRESETS)}.")


def speed_preset(name: str) -> SpeedPreset:
    for preset in SPEED_PRESETS:
        if preset.name == name:
            return preset
    raise ValueError(f"Unknown speed {name!r}; use one of {', '.join(p.name for p in SPEED_PRESETS)}.")


def speed_name(steps: int, first_block_cache: float) -> str:
    """The speed preset these settings are, or "custom" once either was changed by hand."""
    for preset in SPEED_PRESETS:
        if preset.steps == steps and preset.first_block_cache == first_block_cache:
            return preset.name
    return CUSTOM


def size_name(width: int, height: int) -> str:
    for preset in SIZE_PRESETS:
        if (preset.width, preset.height) == (width, height):
            return preset.name
    return CUSTOM


def fits_positional_grid(width: int, height: int, sample_latents: tuple[int, int] = RELEASED_SAMPLE_LATENTS) -> bool:
    """Whether the pipeline takes this size: a multiple of 16 that the RoPE grid covers."""
    try:
        check_size(width, height, max_side=None)
        check_positional_grid(width, height, *positional_grid_px(sample_latents))
    except ValueError:
        return False
    return True


def video_tokens(width: int, height: int, num_frames: int) -> int:
    """Transformer tokens of a clip: latent frames (padded to even) / 2 x (H/16) x (W/16)."""
    latent_frames = (num_frames - 1) // 4 + 1
    latent_frames += latent_frames % 2
    return latent_frames // 2 * (height // SIZE_MULTIPLE) * (width // SIZE_MULTIPLE)


# Seconds per unit of `_step_cost` on an H100-class GPU in bf16, calibrated on the one
# published figure at hand: CogVideoX-1.5-5B (the same transformer without PadaLN, whose
# cost is negligible) takes about 550 s for 81 frames at 1360x768 with 50 steps and CFG on
# one H100 (its model card). Not measured by us: an estimate for labels, +-50 %.
_SECONDS_PER_COST = 550 / 50 / (45_106 * (1 + 45_106 / (6 * HIDDEN)))


def _step_cost(tokens: int) -> float:
    # Per token, the linear layers cost ~24 d^2 FLOPs and attention ~4 N d: the ratio is N / 6d.
    return tokens * (1 + tokens / (6 * HIDDEN))


def estimate_gpu_seconds(
    width: int, height: int, num_frames: int, steps: int, guidance: float = 3.0, first_block_cache: float = 0.0
) -> float:
    """Rough denoising + decoding time on an H100-class GPU (see `_SECONDS_PER_COST`).
    CFG (guidance > 1) doubles the batch; First Block Cache is assumed to skip a third of
    the steps' work (it depends on the clip); decoding adds ~1 s per 4 frames at 768x1360."""
    tokens = video_tokens(width, height, num_frames) + TEXT_TOKENS
    per_step = _step_cost(tokens) * _SECONDS_PER_COST * (1.0 if guidance > 1 else 0.5)
    if first_block_cache > 0:
        per_step *= 2 / 3
    decode = num_frames / 4 * (width * height) / (768 * 1360)
    return steps * per_step + decode


def time_label(seconds: float) -> str:
    if seconds < 90:
        return f"~{max(5, round(seconds / 5) * 5)} s on a GPU"
    return f"~{round(seconds / 60)} min on a GPU"
