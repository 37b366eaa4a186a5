"""Training configuration: nested dataclasses loaded from YAML and validated up front.

A YAML file has up to five sections (`model`, `data`, `train`, `lora`, `validation`);
every key is optional and defaults to the official SFT recipe (see `configs/sft.yaml`).
Unknown keys and out-of-range values fail at load time with a message naming the key,
so a typo never silently trains with a default.

Relative paths are resolved against the working directory (the folder `accelerate
launch` is started from), like every other path on the command line.
"""

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .. import weights
from ..validation import check_frames

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("cosine_with_restarts", "cosine", "linear", "constant", "constant_with_warmup")
# Attention projections and the PadaLN modulation of every block (`control_norm1.linear`).
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "control_norm1.linear")


class ConfigError(ValueError):
    """A training configuration is invalid; the message names the key and the fix."""


@dataclass
class ModelConfig:
    # Hub id or folder in the `gulucaptain/DynamiCtrl` layout: tokenizer, text encoder,
    # VAE and scheduler always come from here, and the transformer unless overridden.
    pretrained: str = weights.BASE_REPO
    # Start from a mask variant's transformer ("mask_background" / "mask_clothing").
    variant: str | None = None
    # Any other transformer folder (config.json + safetensors): a previous run's
    # `transformer/` output, or a CogVideoX-1.5-5B-I2V transformer, whose missing PadaLN
    # weights then start from PyTorch's default init, as in the official training.
    transformer: str | None = None
    weights_dir: str | None = None
    local_files_only: bool = False


@dataclass
class DataConfig:
    data_dir: str = "data/train"  # a `prepare-data` folder: manifest.json, videos/, poses/, masks/
    num_frames: int = 37  # 4k+1 frames per training clip
    # Frames between the starts of consecutive clips of one video (null: num_frames, so
    # clips do not overlap).
    clip_stride: int | None = None
    # Black out the masked region of the reference (white in masks/<id>.png) for items
    # that have a mask: the Mask_B01/Mask_C01 recipe. Masks belong to a video's first
    # frame, so a masked item gives only its clip starting at frame 0.
    use_masks: bool = False
    prompt_dropout: float = 0.0  # probability of training a clip with the empty prompt
    max_sequence_length: int = 226
    # Cache the VAE posteriors of clips and poses and the T5 embeddings on disk (encoded
    # once, sampled every step); off, clips are decoded and encoded at every step.
    cache_latents: bool = True
    cache_dir: str | None = None  # default: <output_dir>/cache
    num_workers: int = 2


@dataclass
class TrainConfig:
    output_dir: str = "outputs/train"
    seed: int = 42
    max_steps: int = 10000  # optimizer steps
    batch_size: int = 1  # clips per device per micro-batch
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-3
    max_grad_norm: float | None = 1.0
    lr_scheduler: str = "cosine_with_restarts"
    lr_warmup_steps: int = 100
    lr_num_cycles: int = 1
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    # Multiplier of the reference image's VAE latent. 1.0 = what the pipeline feeds the
    # transformer at inference (the released weights' demonstrated behaviour); 0.7 = the
    # official training code (which then disagrees with its own inference).
    image_latent_scale: float = 1.0
    # Image noise augmentation (CogVideoX I2V): sigma = exp(N(mean, std)) per clip,
    # added to the reference pixels in [-1, 1] before the VAE.
    image_noise_log_sigma_mean: float = -3.0
    image_noise_log_sigma_std: float = 0.5
    image_dropout: float = 0.05  # probability of zeroing the reference latent
    checkpointing_steps: int = 500  # 0: only the final weights
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None  # null, "latest" or a checkpoint folder
    log_every: int = 10
    report_to: str | None = None  # an accelerate tracker ("tensorboard", "wandb", ...)


@dataclass
class LoraSettings:
    enabled: bool = False
    rank: int = 64
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


@dataclass
class ValidationConfig:
    every_steps: int = 500  # 0: no validation samples
    num_samples: int = 1  # the first N clips of the validation data
    data_dir: str | None = None  # default: the training data
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    seed: int = 42
    fps: float | None = None  # default: the manifest's fps


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else self.output_dir / "cache"

    @property
    def clip_stride(self) -> int:
        return self.data.clip_stride or self.data.num_frames

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_types(section_cls) -> dict[str, Any]:
    return get_type_hints(section_cls)


def _coerce(value, annotation, key: str):
    """YAML value -> the annotated type. PyYAML reads `5e-6` (no dot) as a string, so
    numbers written that way are accepted for float keys."""
    optional = get_origin(annotation) is not None and type(None) in get_args(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} may not be null.")
    base = next((a for a in get_args(annotation) if a is not type(None)), annotation) if optional else annotation
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}.")
        return value
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{key} must be a number, got {value!r}.") from error
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}.")
        return str(value)
    if get_origin(base) is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}.")
        return list(value)
    raise ConfigError(f"{key}: unsupported type {annotation}.")


def _unknown(key: str, valid) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"Unknown config key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}.")


def config_from_dict(raw: dict | None) -> Config:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("A training config is a mapping of sections (model, data, train, lora, validation).")
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise _unknown(name, SECTIONS)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"Section {name!r} must be a mapping of keys, got {values!r}.")
        section_cls = SECTIONS[name]
        types = _section_types(section_cls)
        kwargs = {}
        for key, value in values.items():
            if key not in types:
                raise _unknown(f"{name}.{key}", [f"{name}.{k}" for k in types])
            kwargs[key] = _coerce(value, types[key], f"{name}.{key}")
        sections[name] = section_cls(**kwargs)
    config = Config(**sections)
    validate(config)
    return config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Range and consistency checks; raises ConfigError with the key and the fix."""
    m, d, t, lora, v = config.model, config.data, config.train, config.lora, config.validation
    if m.variant is not None:
        try:
            weights.variant_repo(m.variant)
        except ValueError as error:
            raise ConfigError(f"model.variant: {error}") from error
    _check(not (m.variant and m.transformer), "model.variant and model.transformer both name a transformer: keep one.")

    try:
        check_frames(d.num_frames, "data.num_frames")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _check(d.clip_stride is None or d.clip_stride >= 1, f"data.clip_stride must be >= 1, got {d.clip_stride}.")
    _check(0.0 <= d.prompt_dropout <= 1.0, f"data.prompt_dropout must be in [0, 1], got {d.prompt_dropout}.")
    _check(d.max_sequence_length >= 1, "data.max_sequence_length must be >= 1.")
    _check(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}.")

    _check(t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}.")
    _check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}.")
    _check(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1.")
    _check(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}.")
    for key in ("adam_beta1", "adam_beta2"):
        value = getattr(t, key)
        _check(0.0 <= value < 1.0, f"train.{key} must be in [0, 1), got {value}.")
    _check(t.adam_epsilon > 0, "train.adam_epsilon must be positive.")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}.")
    _check(t.max_grad_norm is None or t.max_grad_norm > 0, "train.max_grad_norm must be positive (null: no clipping).")
    _check(
        t.lr_scheduler in LR_SCHEDULERS,
        f"train.lr_scheduler must be one of {LR_SCHEDULERS}, got {t.lr_scheduler!r}.",
    )
    _check(t.lr_warmup_steps >= 0, "train.lr_warmup_steps must be >= 0.")
    _check(t.lr_num_cycles >= 1, "train.lr_num_cycles must be >= 1.")
    _check(
        t.mixed_precision in MIXED_PRECISION,
        f"train.mixed_precision must be one of {MIXED_PRECISION}, got {t.mixed_precision!r}.",
    )
    _check(t.image_latent_scale > 0, f"train.image_latent_scale must be positive, got {t.image_latent_scale}.")
    _check(t.image_noise_log_sigma_std >= 0, "train.image_noise_log_sigma_std must be >= 0.")
    _check(0.0 <= t.image_dropout <= 1.0, f"train.image_dropout must be in [0, 1], got {t.image_dropout}.")
    _check(t.checkpointing_steps >= 0, "train.checkpointing_steps must be >= 0 (0: final weights only).")
    _check(
        t.checkpoints_total_limit is None or t.checkpoints_total_limit >= 1,
        "train.checkpoints_total_limit must be >= 1 (or null: keep all).",
    )
    _check(t.log_every >= 1, "train.log_every must be >= 1.")

    if lora.enabled:
        _check(lora.rank >= 1, f"lora.rank must be >= 1, got {lora.rank}.")
        _check(lora.alpha > 0, f"lora.alpha must be positive, got {lora.alpha}.")
        _check(0.0 <= lora.dropout < 1.0, f"lora.dropout must be in [0, 1), got {lora.dropout}.")
        _check(len(lora.target_modules) > 0, "lora.target_modules must name at least one module.")

    _check(v.every_steps >= 0, "validation.every_steps must be >= 0 (0: no validation).")
    _check(v.num_samples >= 1, "validation.num_samples must be >= 1.")
    _check(v.num_inference_steps >= 1, "validation.num_inference_steps must be >= 1.")
    _check(v.fps is None or v.fps > 0, "validation.fps must be positive.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` (value parsed as YAML) -> (["section", "key"], value)."""
    if "=" not in text:
        raise ConfigError(f"An override is section.key=value, e.g. train.max_steps=100 (got {text!r}).")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"An override names section.key, e.g. train.learning_rate=1e-5 (got {key!r}).")
    return parts, yaml.safe_load(value) if value.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config (None: all defaults) and applies `section.key=value` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Training config {path} not found (see configs/sft.yaml for an example).")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model, data, train, lora, validation).")
    for text in overrides or ():
        (section, key), value = parse_override(text)
        values = raw.setdefault(section, {}) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"Section {section!r} must be a mapping of keys.")
        values[key] = value
        raw[section] = values
    return config_from_dict(raw)


def dump_config(config: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
