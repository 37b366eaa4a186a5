"""One model manager per process: which model is loaded, where its weights live, and
who may use the GPU right now.

- Models are registered by name with a loader and loaded lazily on first use.
- `with manager.use(name) as model:` takes the GPU lock (one GPU job at a time), moves
  every other model off the GPU, places this one and yields it.
- Loaded models are evicted least-recently-used when the host-RAM budget is exceeded.
- The DynamiCtrl pipeline is assembled from shared parts: switching between the base and
  the mask transformers swaps only the transformer; T5 and the VAE stay the same objects.
- Memory tiers (`none`, `model`, `group`, `sequential`) trade speed for VRAM; `auto`
  picks the fastest that fits the free VRAM, and an out-of-memory error during a job
  is retried once in the next more frugal tier.
"""

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The memory tiers (fastest first) and a job's options live with the other settings.
from .settings import OFFLOAD_CHOICES, TIERS, PipelineOptions  # noqa: F401  (re-exported: the manager's API)

# Parameter counts of the released models (transformer from the key list fixture).
TRANSFORMER_PARAMS = 5_770_420_864
TEXT_ENCODER_PARAMS = 4_762_310_656  # T5 v1.1 XXL encoder
VAE_PARAMS = 215_583_779
TEXT_TOKENS = 226
# Activation memory per transformer token (CFG batch of 2 included), fitted to the
# published H20 peaks (576x1024: 24.7 GB, 768x1360: 28.4 GB, 1360x1360: 34.8 GB at 37
# frames, everything on the GPU). An estimate until measured on our own GPUs.
ACTIVATION_GB_PER_TOKEN = 0.41e-3
VAE_DECODE_GB = 2.5  # tiled + sliced decode working set, estimate
GB = 1e9


def video_tokens(num_frames: int, height: int, width: int) -> int:
    """Transformer sequence length: latent frames / 2 (patch_size_t) x (H/16) x (W/16) + text."""
    latent_frames = (num_frames - 1) // 4 + 1
    latent_frames += latent_frames % 2
    return latent_frames // 2 * (height // 16) * (width // 16) + TEXT_TOKENS


def estimate_vram_gb(
    tier: str, num_frames: int, height: int, width: int, weight_bytes: float = 2.0, t5_on_cpu: bool = False
) -> float:
    """Estimated peak VRAM of one generation in a tier (bf16 weights: 2 bytes, fp8: 1).

    none: every model resident; model: the largest single model at a time; group: one
    transformer block group resident; sequential: one layer resident. Activations and the
    VAE decode come on top; `t5_on_cpu` keeps the text encoder off the GPU. Not measured
    yet: see docs/memory-and-speed.md ("Memory tiers").
    """
    if tier not in TIERS:
        raise ValueError(f"Unknown memory tier {tier!r}; use one of {TIERS}.")
    activations = ACTIVATION_GB_PER_TOKEN * video_tokens(num_frames, height, width)
    transformer = TRANSFORMER_PARAMS * weight_bytes / GB
    text_encoder = 0.0 if t5_on_cpu else TEXT_ENCODER_PARAMS * 2 / GB
    vae = VAE_PARAMS * 2 / GB
    if tier == "none":
        return transformer + text_encoder + vae + activations
    if tier == "model":
        return max(text_encoder, transformer + activations, vae + VAE_DECODE_GB)
    if tier == "group":
        block = transformer / 42
        return max(2 * block + 0.5 + activations, vae + VAE_DECODE_GB)
    return max(0.1 + activations, vae + VAE_DECODE_GB)


def choose_tier(
    free_vram_gb: float,
    num_frames: int,
    height: int,
    width: int,
    weight_bytes: float = 2.0,
    margin_gb: float = 1.0,
    t5_on_cpu: bool = False,
) -> str:
    """The fastest tier whose estimate fits in the free VRAM (minus a margin)."""
    for tier in TIERS:
        if estimate_vram_gb(tier, num_frames, height, width, weight_bytes, t5_on_cpu) + margin_gb <= free_vram_gb:
            return tier
    return TIERS[-1]


def next_tier(tier: str) -> str | None:
    """The next more frugal tier, or None after `sequential`."""
    index = TIERS.index(tier)
    return TIERS[index + 1] if index + 1 < len(TIERS) else None


def module_bytes(obj) -> int:
    """Bytes of parameters and buffers of a torch module or of a pipeline's modules."""
    import torch

    modules = [m for m in _parts(obj) if isinstance(m, torch.nn.Module)]
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class Entry:
    name: str
    loader: Callable[[], Any]
    obj: Any = None
    bytes: int = 0
    last_used: float = 0.0
    users: int = 0
    on_gpu: bool = False
    load_seconds: float = 0.0


class OutOfMemory(RuntimeError):
    """Out of GPU memory even in the most frugal tier; the message names what to lower."""


class ModelManager:
    def __init__(
        self, device: str | None = None, ram_budget_gb: float | None = None, vram_budget_gb: float | None = None
    ):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.ram_budget = None if ram_budget_gb is None else ram_budget_gb * GB
        self.vram_budget = None if vram_budget_gb is None else vram_budget_gb * GB
        self._entries: dict[str, Entry] = {}
        self._registry_lock = threading.RLock()  # guards the entries
        self.gpu_lock = threading.Lock()  # one GPU job at a time

    # ---------------------------------------------------------------- registry
    def register(self, name: str, loader: Callable[[], Any]) -> None:
        """Registers a loader; nothing is loaded until the model is used."""
        with self._registry_lock:
            if name in self._entries and self._entries[name].obj is not None:
                raise ValueError(f"Model {name!r} is loaded; unload it before registering a new loader.")
            self._entries[name] = Entry(name, loader)

    def is_registered(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str):
        """The model, loaded on first call (on the CPU side)."""
        with self._registry_lock:
            entry = self._entry(name)
            if entry.obj is None:
                started = time.perf_counter()
                entry.obj = entry.loader()
                entry.load_seconds = time.perf_counter() - started
                entry.bytes = module_bytes(entry.obj)
            entry.last_used = time.monotonic()
            self._evict_for_ram(keep={name})
            return entry.obj

    def _entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(f"No model named {name!r} is registered; known: {sorted(self._entries)}.")
        return self._entries[name]

    # ---------------------------------------------------------------- placement
    @contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """Serialises GPU jobs and keeps only this model on the GPU for the job."""
        with self.gpu_lock, self.holding(name) as obj:
            if self.device != "cpu":
                self.offload_all_except({name})
                _move(obj, self.device)
                self._entries[name].on_gpu = True
            yield obj

    @contextmanager
    def holding(self, *names: str) -> Iterator[Any]:
        """Loads the models and protects them from eviction and unloading while held."""
        objects = [self.get(name) for name in names]
        entries = [self._entries[name] for name in names]
        for entry in entries:
            entry.users += 1
        try:
            yield objects[0] if len(objects) == 1 else objects
        finally:
            for entry in entries:
                entry.users -= 1
                entry.last_used = time.monotonic()

    def mark_on_gpu(self, *names: str) -> None:
        for name in names:
            self._entries[name].on_gpu = self.device != "cpu"

    def offload_all_except(self, keep: set[str]) -> None:
        moved = False
        for other in self._entries.values():
            if other.on_gpu and other.name not in keep and other.obj is not None:
                _offload(other.obj)
                other.on_gpu = False
                moved = True
        if moved:  # a full garbage collection costs ~0.3 s in a big process: only when it can free something
            free_gpu_memory()

    def _evict_for_ram(self, keep: set[str]) -> None:
        if self.ram_budget is None:
            return
        while self.loaded_bytes() > self.ram_budget:
            candidates = [
                e for e in self._entries.values() if e.obj is not None and e.users == 0 and e.name not in keep
            ]
            if not candidates:
                return
            self.unload(min(candidates, key=lambda e: e.last_used).name)

    # ---------------------------------------------------------------- memory
    def loaded_bytes(self) -> int:
        """Host memory held by loaded models (shared tensors counted once)."""
        return sum(e.bytes for e in self._entries.values() if e.obj is not None)

    def unload(self, name: str) -> None:
        with self._registry_lock:
            entry = self._entry(name)
            if entry.users:
                raise RuntimeError(f"Model {name!r} is in use; it can be unloaded when the job ends.")
            if entry.obj is None:
                return
            if entry.on_gpu:
                _offload(entry.obj)
            entry.obj, entry.bytes, entry.on_gpu = None, 0, False
        free_gpu_memory()

    def unload_all(self) -> None:
        for name in list(self._entries):
            self.unload(name)

    def status(self) -> list[dict]:
        """What is loaded where, for a system panel."""
        rows = []
        for entry in self._entries.values():
            rows.append(
                {
                    "name": entry.name,
                    "loaded": entry.obj is not None,
                    "device": (self.device if entry.on_gpu else "cpu") if entry.obj is not None else None,
                    "gb": round(entry.bytes / GB, 3),
                    "in_use": entry.users > 0,
                    "load_seconds": round(entry.load_seconds, 2),
                }
            )
        return rows

    def run_with_oom_retry(self, job: Callable[[str], Any], tier: str, describe: str = "the job"):
        """Runs `job(tier)`; on CUDA out-of-memory frees memory and retries once in the next
        more frugal tier. A second failure raises `OutOfMemory` naming what to lower."""
        import torch

        try:
            return job(tier)
        except torch.OutOfMemoryError as first:
            free_gpu_memory()
            retry_tier = next_tier(tier)
            if retry_tier is None:
                raise OutOfMemory(_oom_message(describe, tier)) from first
            try:
                return job(retry_tier)
            except torch.OutOfMemoryError as second:
                free_gpu_memory()
                raise OutOfMemory(_oom_message(describe, retry_tier)) from second


def _oom_message(describe: str, tier: str) -> str:
    return (
        f"Out of GPU memory during {describe} even with the '{tier}' memory tier. Lower the resolution "
        "(e.g. 576x1024 instead of 768x1360) or the number of frames, enable fp8 weights, or close other GPU programs."
    )


def _parts(obj) -> list:
    """A model, the components of a pipeline, or the values of a dict of components."""
    if isinstance(obj, dict):
        return list(obj.values())
    if hasattr(obj, "components") and not hasattr(obj, "parameters"):
        return list(obj.components.values())
    return [obj]


def _move(obj, device: str) -> None:
    for part in _parts(obj):
        if hasattr(part, "to") and hasattr(part, "parameters"):
            part.to(device)


def _offload(obj) -> None:
    """Back to the CPU, removing any offload hooks first."""
    if hasattr(obj, "remove_all_hooks"):
        obj.remove_all_hooks()
    _move(obj, "cpu")


def free_gpu_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -------------------------------------------------------------------- DynamiCtrl
@dataclass
class DynamiCtrlModels:
    """Registers the DynamiCtrl parts in a manager so variants share T5 and the VAE."""

    manager: ModelManager
    model: str | Path
    weights_dir: str | Path | None = None
    torch_dtype: Any = None
    _base: Path | None = field(default=None, repr=False)
    _registered: bool = field(default=False, repr=False)

    def base_folder(self) -> Path:
        from . import weights

        if self._base is None:
            self._base = weights.resolve(self.model, self.weights_dir)
        return self._base

    def register(self) -> None:
        from .pipeline import load_shared_components, load_transformer

        if self._registered:
            return
        self.unload()  # parts another DynamiCtrlModels (e.g. another dtype) loaded
        self.manager.register("dynamictrl.shared", lambda: load_shared_components(self.base_folder(), self.torch_dtype))
        for variant in (None, "mask_background", "mask_clothing"):
            self.manager.register(
                transformer_name(variant),
                lambda variant=variant: load_transformer(
                    self.base_folder(), variant, self.torch_dtype, self.weights_dir
                ),
            )
        self._registered = True

    def pipeline(self, variant: str | None, options: PipelineOptions | None = None):
        """A pipeline over the shared parts and this variant's transformer. Other variants'
        transformers are unloaded first: only one 5.8B transformer is held at a time."""
        from . import weights
        from .pipeline import DynamiCtrlPipeline

        weights.variant_repo(variant)
        self.register()
        for other in (None, "mask_background", "mask_clothing"):
            if other != variant:
                self.manager.unload(transformer_name(other))
        options = options or PipelineOptions()
        shared = self.manager.get("dynamictrl.shared")
        transformer = self.manager.get(transformer_name(variant))
        state = sticky_state(transformer)
        if any(state) and state != wanted_sticky_state(options):
            # fp8/int8 storage, fused QKV and compilation cannot be undone in place: reload.
            self.manager.unload(transformer_name(variant))
            transformer = self.manager.get(transformer_name(variant))
        pipe = DynamiCtrlPipeline(transformer=transformer, **shared)
        # Tiled, sliced decoding as in the official script (its outputs are what we match).
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
        apply_speed_options(pipe, options)
        return pipe

    def unload(self) -> None:
        for name in ("dynamictrl.shared", *(transformer_name(v) for v in (None, "mask_background", "mask_clothing"))):
            if self.manager.is_registered(name):
                self.manager.unload(name)

    def tier_for(self, options: PipelineOptions, num_frames: int, height: int, width: int) -> str:
        """The memory tier for a job: the option, or for `auto` the fastest that fits."""
        import torch

        if self.manager.device == "cpu":
            return "none"
        if options.offload != "auto":
            return options.offload
        free, _total = torch.cuda.mem_get_info(torch.device(self.manager.device))
        if self.manager.vram_budget is not None:
            free = min(free, self.manager.vram_budget)
        return choose_tier(
            free / GB,
            num_frames,
            height,
            width,
            weight_bytes=1.0 if options.fp8 or options.int8 else 2.0,
            t5_on_cpu=options.t5_on_cpu,
        )

    @contextmanager
    def use(self, variant: str | None, options: PipelineOptions, tier: str) -> Iterator[Any]:
        """The pipeline placed in `tier` for one job, under the GPU lock."""
        names = ("dynamictrl.shared", transformer_name(variant))
        with self.manager.gpu_lock:
            pipe = self.pipeline(variant, options)
            with self.manager.holding(*names):
                self.manager.offload_all_except(set(names))
                place_pipeline(pipe, tier, self.manager.device, t5_on_cpu=options.t5_on_cpu)
                self.manager.mark_on_gpu(*names)
                yield pipe


def transformer_name(variant: str | None) -> str:
    return f"dynamictrl.transformer.{variant or 'base'}"


def apply_speed_options(pipe, options: PipelineOptions) -> None:
    """Cache hooks, fp8 storage, fused QKV and torch.compile on the transformer; idempotent."""
    import torch
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig

    transformer = pipe.transformer
    if transformer.is_cache_enabled:
        transformer.disable_cache()
    if options.first_block_cache > 0 and options.pyramid_attention_broadcast:
        raise ValueError("Use either First Block Cache or Pyramid Attention Broadcast, not both.")
    if options.first_block_cache > 0:
        transformer.enable_cache(FirstBlockCacheConfig(threshold=options.first_block_cache))
    if options.pyramid_attention_broadcast:
        transformer.enable_cache(
            PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2,
                spatial_attention_timestep_skip_range=(100, 800),
                current_timestep_callback=lambda: pipe.current_timestep,
            )
        )
    # These change the transformer itself and cannot be undone in place; a transformer
    # that carries other ones than asked for is reloaded by `DynamiCtrlModels.pipeline`.
    if options.fp8 and not getattr(transformer, "_dynamictrl_fp8", False):
        # Compute in the model's own dtype: diffusers keeps the patch embedding and norms
        # unconverted, so another compute dtype would mix dtypes in one matmul.
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=transformer.dtype)
        transformer._dynamictrl_fp8 = True
    if options.int8 and not getattr(transformer, "_dynamictrl_int8", False):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        # Only the transformer blocks' linear layers: the patch embedding, norms and output
        # head stay in full precision (they are small and sensitive).
        quantize_(transformer.transformer_blocks, Int8WeightOnlyConfig())
        transformer._dynamictrl_int8 = True
    if options.fuse_qkv and not getattr(transformer, "_dynamictrl_fused", False):
        transformer.fuse_qkv_projections()
        transformer._dynamictrl_fused = True
    if options.compile and not getattr(transformer, "_dynamictrl_compiled", False):
        transformer.compile()  # in place: the shared transformer stays the same object
        transformer._dynamictrl_compiled = True


def sticky_state(transformer) -> tuple[bool, ...]:
    """(fp8, int8, fused QKV, compiled) as applied to a transformer."""
    return tuple(getattr(transformer, f"_dynamictrl_{name}", False) for name in ("fp8", "int8", "fused", "compiled"))


def wanted_sticky_state(options: PipelineOptions) -> tuple[bool, ...]:
    return (options.fp8, options.int8, options.fuse_qkv, options.compile)


def place_pipeline(pipe, tier: str, device: str, t5_on_cpu: bool = False) -> None:
    """Puts the pipeline on `device` in a memory tier (after removing older hooks).

    With `t5_on_cpu` the text encoder is kept out of every offload scheme and stays on
    the CPU; the pipeline then runs the prompt through it there and moves only the
    embeddings to `device` (`DynamiCtrlPipeline.execution_device`).
    """
    if tier not in TIERS:
        raise ValueError(f"Unknown memory tier {tier!r}; use one of {TIERS}.")
    clear_placement(pipe)
    text_encoder = pipe.text_encoder if t5_on_cpu and device != "cpu" else None
    if text_encoder is not None:
        pipe.register_modules(text_encoder=None)  # invisible to the offload helpers below
    try:
        _place(pipe, tier, device)
    finally:
        if text_encoder is not None:
            pipe.register_modules(text_encoder=text_encoder.to("cpu"))
    pipe.execution_device = device
    pipe.text_encoder_device = "cpu" if text_encoder is not None else None


def _place(pipe, tier: str, device: str) -> None:
    if device == "cpu" or tier == "none":
        pipe.to(device)
    elif tier == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif tier == "group":
        pipe.enable_group_offload(
            onload_device=device,
            offload_device="cpu",
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def clear_placement(pipe) -> None:
    """Removes accelerate offload hooks and diffusers group-offloading hooks."""
    import torch
    from diffusers.hooks import HookRegistry

    pipe.remove_all_hooks()
    pipe.execution_device = pipe.text_encoder_device = None
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if not isinstance(registry, HookRegistry):
                continue
            for hook_name in list(registry.hooks):
                if "group_offloading" in hook_name or "layer_execution_tracker" in hook_name:
                    registry.remove_hook(hook_name, recurse=False)
