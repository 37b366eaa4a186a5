"""The settings of every job, with their defaults, ranges, choices and help, in one place.

    from dynamictrl.settings import GenerateSettings, PipelineOptions
    settings = GenerateSettings(prompt="a dancer ...", num_frames=73, memory=PipelineOptions(offload="model"))

Each field carries its help text and its limits as field metadata (`option(...)`):
`help`, `min`, `max`, `step` (the increment a widget offers; for frames and sizes it is the
rule itself: 4k+1, multiples of 16), `choices`, `hint` (said in error messages), `label`,
`rule` (the `dynamictrl.validation` function that checks a range the numbers alone cannot
say), and for the command line `flag` and `metavar`. What reads them:

- the checks: `dynamictrl.validation.check_fields` (every entry point calls it);
- the CLI: `dynamictrl.cli` builds the `generate` / `pose` / `lipsync` arguments from them;
- the Ray job schema: `dynamictrl.serve.schema.settings_model` (pydantic `Field`s);
- the app: `widget_spec(name)` gives a widget its default, range, step, choices and help.

Memory and speed options are one nested object, `GenerateSettings.memory` (a
`PipelineOptions`, the object the model manager takes). Manifests written before it was
nested hold those fields flat; `settings_from_dict` reads both. No torch, no gradio here.
"""

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, NamedTuple

from .validation import MAX_SIDE, MIN_SIDE, MIN_WINDOW_FRAMES, SIZE_MULTIPLE, TEMPORAL_COMPRESSION
from .weights import VARIANTS

TIERS = ("none", "model", "group", "sequential")  # memory tiers, fastest first, most frugal last
OFFLOAD_CHOICES = ("auto", *TIERS)
DTYPES = ("auto", "bf16", "fp16", "fp32")
MASK_MODES = ("background", "clothing")
RETARGET_CHOICES = ("global", "bones", "none")
# What torch.Generator.manual_seed takes.
SEED_RANGE = (-(2**63), 2**64 - 1)


def option(default=MISSING, *, help: str, default_factory=MISSING, **metadata) -> Any:
    """A dataclass field with its help and limits as metadata (see the module docstring)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help, **metadata})


@dataclass
class PipelineOptions:
    """How the DynamiCtrl pipeline is placed and sped up for a job (memory tiers:
    docs/memory-and-speed.md)."""

    offload: str = option(
        "auto",
        choices=OFFLOAD_CHOICES,
        flag="--offload",
        help="where weights live during generation (auto: the fastest tier that fits free VRAM)",
    )
    fp8: bool = option(False, flag="--fp8", help="store transformer weights in float8 (about half the VRAM)")
    int8: bool = option(False, flag="--int8", help="torchao int8 weight-only transformer (about half the VRAM)")
    first_block_cache: float = option(
        0.0,
        min=0.0,
        max=1.0,
        step=0.01,
        flag="--first-block-cache",
        metavar="THRESHOLD",
        hint="0 = off, 0.05 is a typical threshold",
        help="skip the remaining blocks when the first block's output barely changes (e.g. 0.05; 0 = off)",
    )
    pyramid_attention_broadcast: bool = option(
        False, flag="--pab", help="Pyramid Attention Broadcast (reuses attention across steps)"
    )
    compile: bool = option(False, flag="--compile", help="torch.compile the transformer (slow first run)")
    fuse_qkv: bool = option(False, flag="--fuse-qkv", help="fuse the attention Q/K/V projections")
    # T5 (9.5 GB in bf16) encodes the prompt on the CPU and never takes GPU memory: with
    # fp8/int8 weights in the `model` tier it is the largest model, so this lowers the peak.
    t5_on_cpu: bool = option(
        False, flag="--t5-on-cpu", help="encode the prompt on the CPU: T5 (9.5 GB) never takes GPU memory; slower start"
    )

    def __post_init__(self):
        from .validation import check_memory_options

        check_memory_options(self)


def _size(default: int, side: str):
    return option(
        default,
        min=MIN_SIDE,
        max=MAX_SIDE,
        step=SIZE_MULTIPLE,
        rule="check_size",
        flag=f"--{side}",
        help=f"output {side} in pixels (a multiple of {SIZE_MULTIPLE}, at most {MAX_SIDE})",
    )


@dataclass
class GenerateSettings:
    """One generation: `Studio.generate(image, pose, out, settings)`. Defaults are the
    official ones (37 frames, 768x1360, 25 steps, guidance 3.0, 16 fps)."""

    # The one required field; empty asks for an auto caption (the CLI's default).
    prompt: str = option(flag="--prompt", help="describe the person and the background (empty: auto caption)")
    negative_prompt: str = option("", flag="--negative-prompt", help="what the video should not show")
    num_frames: int = option(
        37,
        min=1,
        step=TEMPORAL_COMPRESSION,
        rule="check_frames",
        flag="--frames",
        help="4k+1 frames, any length (longer clips are made in overlapping windows)",
    )
    width: int = _size(768, "width")
    height: int = _size(1360, "height")
    steps: int = option(
        25, min=1, max=200, step=1, hint="25 is the official setting", flag="--steps", help="denoising steps"
    )
    guidance: float = option(
        3.0,
        min=0.0,
        max=20.0,
        step=0.5,
        hint="3.0 is the official setting",
        flag="--guidance",
        help="classifier-free guidance scale (1 or less: off)",
    )
    seed: int = option(
        42,
        min=SEED_RANGE[0],
        max=SEED_RANGE[1],
        flag="--seed",
        help="random seed: the same seed and settings give the same video",
    )
    fps: float = option(
        16.0,
        min=1.0,
        max=120.0,
        step=1.0,
        hint="16 is the trained rate",
        flag="--fps",
        help="frame rate of the video (driving videos are sampled at it)",
    )
    variant: str | None = option(
        None,
        choices=tuple(sorted(VARIANTS)),
        flag="--variant",
        help="a mask-trained transformer (default: the base one, or the one --mask-mode picks)",
    )
    # Scales the PadaLN pose injection (our extension, not the paper's): 1.0 = the trained
    # model bit for bit, 0 = the pose video is ignored, up to 2 = followed more tightly.
    pose_strength: float = option(
        1.0,
        min=0.0,
        max=2.0,
        step=0.05,
        hint="1 = the trained model",
        flag="--pose-strength",
        help="scale of the pose injection: 1 = the trained model, 0 = ignore the poses, "
        "up to 2 = follow them more tightly (an extension, not in the paper)",
    )
    dtype: str = option(
        "auto",
        choices=DTYPES,
        flag="--dtype",
        help="weights' dtype (auto: bf16 on a GPU that has it, else fp16 on a GPU, fp32 on a CPU)",
    )
    mask_mode: str | None = option(
        None,
        choices=MASK_MODES,
        flag="--mask-mode",
        help="black out this region of the reference and let the prompt fill it (picks the Mask variant)",
    )
    mask_fill: str = option("", flag="--fill", help="with a mask mode and no prompt: what the masked region shows")
    # SAM clicks (x, y, 1 include / 0 exclude) in target-size pixels; None: from the DWPose person box.
    mask_points: list | None = option(
        None, help="SAM clicks [x, y, 1 include / 0 exclude] in target-size pixels (none: from the person box)"
    )
    memory: PipelineOptions = option(default_factory=PipelineOptions, help="memory and speed")
    # Long videos (dynamictrl/longvideo.py): clips longer than one window are sampled as
    # overlapping windows denoised together; a clip that fits one window is unaffected.
    window_frames: int = option(
        37,
        min=MIN_WINDOW_FRAMES,
        step=TEMPORAL_COMPRESSION,
        rule="check_window",
        flag="--window-frames",
        help="frames per window for long clips (4k+1; 37 is the trained length)",
    )
    overlap: int = option(
        2,
        min=0,
        rule="check_window",
        flag="--overlap",
        help="latent frames shared by neighbouring windows (each is 4 video frames)",
    )
    color_match: bool = option(
        True, flag="--no-color-match", help="match each window's colours to the first window's (the flag turns it off)"
    )
    # Attention kernel (dynamictrl/models/attention.py, which checks the name): native | flash | ...
    attention: str = option(
        "native",
        flag="--attention",
        metavar="KERNEL",
        help="attention kernel: native, flash, flash3, sage, xformers, flex, cudnn, efficient, math",
    )

    def __post_init__(self):
        # From JSON (a manifest, a job) the options arrive as a dict.
        if isinstance(self.memory, dict):
            self.memory = PipelineOptions(**self.memory)


@dataclass
class PoseSettings:
    """How a pose video is made from a driving video (see `dynamictrl.pose.sequence`)."""

    num_frames: int = option(
        37,
        min=MIN_WINDOW_FRAMES,
        step=TEMPORAL_COMPRESSION,
        rule="check_frames",
        flag="--frames",
        help="4k+1 frames incl. frame 0, the reference pose (at least 5)",
    )
    width: int = _size(768, "width")
    height: int = _size(1360, "height")
    # Driving frames are resampled to this; None (or 0) keeps every frame (official).
    fps: float | None = option(
        16.0,
        min=0.0,
        max=120.0,
        step=1.0,
        hint="None or 0 keeps every frame of the driving video",
        flag="--fps",
        help="resample the driving video to this fps (0: keep every frame, as the official code)",
    )
    start_s: float = option(
        0.0,
        min=0.0,
        label="start time (start_s)",
        hint="seconds",
        flag="--start",
        help="start time in the driving video (s)",
    )
    retarget: str = option(
        "global",
        choices=RETARGET_CHOICES,
        flag="--retarget",
        help="fit the driving poses to the reference body (global: the official fit; "
        "bones: the reference's limb lengths; none)",
    )
    detect_every: int = option(
        1,
        min=1,
        max=1000,
        flag="--detect-every",
        help="run the person detector every N frames (faster; boxes are reused between)",
    )
    loop: bool = option(False, flag="--loop", help="loop a driving video that is too short")


# ---------------------------------------------------------------------------- readers
class WidgetSpec(NamedTuple):
    """What a form widget needs to show one setting (None where the setting has none)."""

    default: Any
    minimum: float | None
    maximum: float | None
    step: float | None
    choices: tuple | None
    help: str


def find_field(cls: type, name: str):
    """The dataclass field `name` of `cls`; a dotted name reaches into a nested option
    object ("memory.offload"), and a plain name is also looked up there ("offload")."""
    head, _, rest = name.partition(".")
    by_name = {item.name: item for item in fields(cls)}
    if head in by_name:
        item = by_name[head]
        return find_field(item.default_factory, rest) if rest else item
    for item in fields(cls):
        if not rest and item.default_factory is not MISSING and is_dataclass(item.default_factory):
            found = {inner.name: inner for inner in fields(item.default_factory)}.get(head)
            if found is not None:
                return found
    raise KeyError(f"{cls.__name__} has no setting {name!r}; its settings: {', '.join(by_name)}.")


def field_default(item):
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return None


def widget_spec(name: str, cls: type = GenerateSettings) -> WidgetSpec:
    """Default, range, step, choices and help of one setting, for the app's widgets (the
    same numbers the checks, the CLI and the job schema use)."""
    item = find_field(cls, name)
    meta = item.metadata
    choices = meta.get("choices")
    return WidgetSpec(
        field_default(item),
        meta.get("min"),
        meta.get("max"),
        meta.get("step"),
        tuple(choices) if choices is not None else None,
        meta.get("help", ""),
    )


def nest_flat(cls: type, values: dict) -> dict:
    """`values` with the fields of a nested option object that were given at the top level
    (manifests written before `memory` was nested: {"offload": "model", ...}) moved into
    it; fields given inside it win."""
    values = dict(values)
    own = {item.name for item in fields(cls)}
    for item in fields(cls):
        inner_cls = item.default_factory if item.default_factory is not MISSING else None
        if not is_dataclass(inner_cls):
            continue
        moved = {
            name: values.pop(name)
            for name in [inner.name for inner in fields(inner_cls)]
            if name in values and name not in own
        }
        if moved:
            inner = values.get(item.name) or {}
            if is_dataclass(inner):
                inner = {f.name: getattr(inner, f.name) for f in fields(inner)}
            values[item.name] = {**moved, **inner}
    return values


def settings_from_dict(cls: type, values: dict, ignore_unknown: bool = False):
    """A settings object from a dict (a manifest's "settings", nested or the older flat
    form); names `cls` does not have raise, or are dropped with `ignore_unknown` (a
    manifest of another version)."""
    values = nest_flat(cls, values)
    known = {item.name: item for item in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown and not ignore_unknown:
        raise ValueError(
            f"{cls.__name__} has no setting {', '.join(map(repr, unknown))}; its settings: {', '.join(sorted(known))}."
        )
    built = {}
    for name, value in values.items():
        if name not in known:
            continue
        inner_cls = known[name].default_factory
        if isinstance(value, dict) and is_dataclass(inner_cls):
            value = settings_from_dict(inner_cls, value, ignore_unknown)
        built[name] = value
    return cls(**built)
