"""DynamiCtrl supervised fine-tuning (SFT) with accelerate: the official recipe, resumable.

One optimizer step (per clip of the batch):
  1. reference pixels + N(0, sigma^2) noise, sigma = exp(N(-3, 0.5))  (CogVideoX I2V augmentation)
  2. image latent (x image_latent_scale, zero frames, front padding), pose latents and
     target latents written as the pipeline writes them (see latents.py)
  3. with p = image_dropout the image latent is zeroed, with p = prompt_dropout the
     prompt becomes the empty prompt
  4. t ~ U{0, ..., 999}, x_t = sqrt(a) x0 + sqrt(1-a) eps, the transformer sees
     [x_t ++ image latent] with the pose latents, text, t, ofs = 2.0 and the RoPE of the
     pipeline, and predicts v
  5. loss = 1/(1-a) weighted x0 error (losses.py), on the real (unpadded) latent frames
AdamW (betas 0.9/0.95, wd 1e-3), gradient clipping 1.0, cosine-with-restarts warmup
schedule, bf16 autocast over float32 master weights (full SFT) or a bf16 base with
float32 adapters (LoRA), gradient checkpointing.

Every random draw of a step comes from a generator seeded by (seed, process, step,
micro-batch), and the data order from accelerate's seedable sampler, so a run resumed
from a checkpoint continues exactly as if it had not stopped.

Outputs under `train.output_dir`: `transformer/` (full SFT, diffusers format,
safetensors) or `lora/pytorch_lora_weights.safetensors`; `checkpoints/checkpoint-<step>/`
(resumable state); `validation/step-<step>/<clip>.mp4`; `train_log.jsonl`;
`train_config.yaml`; `cache/` (T5 embeddings and VAE posteriors).
"""

import gc
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    ProjectConfiguration,
    set_seed,
)
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.utils.torch_utils import randn_tensor
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import T5EncoderModel, T5Tokenizer

from .. import weights
from ..models.transformer import DynamiCtrlTransformerModel
from ..pipeline import DynamiCtrlPipeline, latent_layout, load_transformer
from ..validation import check_size
from ..video import write_video
from . import lora as lora_utils
from .config import Config, ConfigError, dump_config
from .dataset import ClipDataset, to_unit_range
from .latents import (
    LatentCache,
    PromptCache,
    TrainingSamples,
    encode_image_latents,
    encode_posterior,
    inference_image_latent_scale,
    sample_video_latents,
)
from .losses import add_noise, v_prediction_loss

logger = logging.getLogger("dynamictrl.train")

STATE_FILE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    global_step: int
    losses: list[float]  # one per optimizer step of this run (mean over micro-batches and processes)
    output_dir: Path
    weights_path: Path | None  # transformer/ (full SFT) or lora/ folder
    checkpoints: list[Path] = field(default_factory=list)
    validation_videos: list[Path] = field(default_factory=list)


class CachedPromptPipeline(DynamiCtrlPipeline):
    """The sampling pipeline without a text encoder: prompts are looked up in the run's
    T5 cache (the encoder was freed before training)."""

    prompt_cache: PromptCache | None = None

    def _get_t5_prompt_embeds(
        self,
        prompt=None,
        num_videos_per_prompt: int = 1,
        max_sequence_length: int = 226,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds = torch.stack([self.prompt_cache.load(p) for p in prompts])
        embeds = embeds.to(device=device or self._execution_device, dtype=dtype)
        return embeds.repeat_interleave(num_videos_per_prompt, dim=0)


# ---------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: Path) -> list[Path]:
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        complete = path.is_dir() and (path / STATE_FILE).is_file()
        if complete and path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def find_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
    """`resume`: None (fresh run), "latest" (the newest complete checkpoint of the run, or
    a fresh run if there is none) or a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"train.resume_from_checkpoint: {path} is not a checkpoint folder (no {STATE_FILE}).")
    return path


def read_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def _checkpoint_keys(folder: Path) -> set[str] | None:
    """Tensor names stored in a diffusers model folder (None if it holds no safetensors)."""
    index = next(iter(folder.glob("*.safetensors.index.json")), None)
    if index is not None:
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    keys = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            keys.update(handle.keys())
    return keys


def _load_full_weights(model: torch.nn.Module, folder: Path) -> None:
    """Loads a `save_pretrained` folder (single file or shards) into `model` in place."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No safetensors weights in {folder}.")
    expected = set(model.state_dict())
    seen = set()
    for file in files:
        state = load_file(str(file))
        model.load_state_dict(state, strict=False)
        seen.update(state)
    missing = expected - seen
    if missing:
        raise ValueError(f"{folder} lacks {len(missing)} weights of the transformer, e.g. {min(missing)}.")


def load_trainable_transformer(config: Config, base: Path, dtype: torch.dtype) -> DynamiCtrlTransformerModel:
    """The transformer training starts from: the base folder's, a mask variant's, or
    `model.transformer` (a DynamiCtrl folder, or a CogVideoX-1.5 I2V transformer whose
    missing PadaLN layers are initialised like PyTorch's defaults, as officially)."""
    m = config.model
    if m.transformer is None:
        return load_transformer(base, m.variant, dtype, m.weights_dir, m.local_files_only)
    folder = weights.resolve(m.transformer, m.weights_dir, m.local_files_only)
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.transformer: {folder} holds no transformer (config.json + safetensors).")
    keys = _checkpoint_keys(folder) or set()
    if any(".control_norm1." in key for key in keys):
        return DynamiCtrlTransformerModel.from_pretrained(folder, torch_dtype=dtype)
    logger.info("%s has no PadaLN weights: starting them from PyTorch's default init (official training).", folder)
    model = DynamiCtrlTransformerModel.from_pretrained(folder, torch_dtype=dtype, low_cpu_mem_usage=False)
    with torch.no_grad():
        for block in model.transformer_blocks:
            # from_pretrained leaves weights it did not find uninitialised: reset them.
            block.control_norm1.linear.reset_parameters()
            block.control_norm1.norm.reset_parameters()
    return model


def step_generator(seed: int, process: int, step: int, micro: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{process}/{step}/{micro}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Trainer:
    def __init__(self, config: Config):
        self.config = config
        self.output_dir = config.output_dir
        t = config.train
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with=t.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed),
        )
        self.weight_dtype = WEIGHT_DTYPES[t.mixed_precision]
        self.is_lora = config.lora.enabled
        self.losses: list[float] = []
        self.checkpoints: list[Path] = []
        self.validation_videos: list[Path] = []
        self.global_step = 0

    # ------------------------------------------------------------------ setup
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _log(self, message: str, *args) -> None:
        if self.accelerator.is_main_process:
            logger.info(message, *args)

    def _prepare_data(self, base: Path) -> None:
        c = self.config
        self.train_clips = ClipDataset(c.data.data_dir, c.data.num_frames, c.clip_stride, c.data.use_masks)
        if self.train_clips.too_short:
            self._log(
                "%d items are shorter than %d frames and are left out.",
                len(self.train_clips.too_short),
                c.data.num_frames,
            )
        self.validation_clips = None
        if c.validation.every_steps:
            data_dir = c.validation.data_dir or c.data.data_dir
            self.validation_clips = ClipDataset(data_dir, c.data.num_frames, c.clip_stride, c.data.use_masks)
        self.vae = AutoencoderKLCogVideoX.from_pretrained(base, subfolder="vae", torch_dtype=self.weight_dtype)
        self.vae.requires_grad_(False).eval().to(self.device)
        height, width = self.train_clips.size
        spatial = 2 ** (len(self.vae.config.block_out_channels) - 1)
        multiple = spatial * self.transformer_config["patch_size"]
        try:
            check_size(width, height, multiple=multiple, max_side=None)
        except ValueError as error:
            raise ConfigError(f"The training clips: {error}") from None
        self.layout = latent_layout(
            c.data.num_frames, self.vae.config.temporal_compression_ratio, self.transformer_config.get("patch_size_t")
        )
        # The pipeline encodes with slicing and tiling on; training encodes the same way.
        self.vae.enable_slicing()
        self.vae.enable_tiling()
        self.scheduler = CogVideoXDPMScheduler.from_pretrained(base, subfolder="scheduler", timestep_spacing="trailing")
        if self.scheduler.config.prediction_type != "v_prediction":
            kind = self.scheduler.config.prediction_type
            raise ConfigError(f"{base}/scheduler predicts {kind!r}; DynamiCtrl is trained with v-prediction.")

        pipeline_scale = inference_image_latent_scale(self.vae)
        if not math.isclose(c.train.image_latent_scale, pipeline_scale):
            self._log(
                "train.image_latent_scale = %g but the pipeline feeds the image latent x%g at inference: the trained "
                "model will see different image latents when sampling (the official training's mismatch).",
                c.train.image_latent_scale,
                pipeline_scale,
            )

        self._cache_prompts(base)
        self.latent_cache = None
        if c.data.cache_latents:
            extra = {"masks": c.data.use_masks}
            self.latent_cache = LatentCache.for_run(c.cache_dir, self.vae, self.train_clips, extra)
            self._cache_latents(self.latent_cache)

    def _cache_prompts(self, base: Path) -> None:
        c = self.config
        prompts = [clip.item.prompt for clip in self.train_clips.clips] + [""]
        if self.validation_clips is not None:
            prompts += [clip.item.prompt for clip in self.validation_clips.clips[: c.validation.num_samples]]
        text_config = json.loads((base / "text_encoder" / "config.json").read_text())
        self.prompt_cache = PromptCache.for_run(c.cache_dir, text_config, c.data.max_sequence_length, self.weight_dtype)
        if self.accelerator.is_main_process:
            missing = self.prompt_cache.missing(prompts)
            if missing:
                logger.info(
                    "Encoding %d distinct prompts with T5 (cached in %s).", len(missing), self.prompt_cache.folder
                )
                tokenizer = T5Tokenizer.from_pretrained(base, subfolder="tokenizer")
                text_encoder = T5EncoderModel.from_pretrained(base, subfolder="text_encoder", dtype=self.weight_dtype)
                text_encoder.requires_grad_(False).eval().to(self.device)
                pipe = DynamiCtrlPipeline(
                    tokenizer=tokenizer,
                    text_encoder=text_encoder,
                    vae=self.vae,
                    transformer=None,
                    scheduler=self.scheduler,
                )
                self.prompt_cache.fill(pipe, missing, c.data.max_sequence_length, self.device, self.weight_dtype)
                # T5 is needed only for these embeddings: free it before the transformer loads.
                del pipe, text_encoder, tokenizer
                free_memory()
        self.accelerator.wait_for_everyone()
        self.empty_prompt_embeds = self.prompt_cache.load("")

    def _cache_latents(self, cache: LatentCache) -> None:
        """Each process encodes its share of the uncached clips; all wait for the whole cache."""
        a = self.accelerator
        indices = range(a.process_index, len(self.train_clips), a.num_processes)
        started = time.perf_counter()
        done = cache.fill(self.train_clips, self.vae, indices)
        if done:
            logger.info(
                "Process %d cached the VAE posteriors of %d clips in %.1f s (%s).",
                a.process_index,
                done,
                time.perf_counter() - started,
                cache.folder,
            )
        a.wait_for_everyone()

    def _prepare_model(self, base: Path) -> None:
        c = self.config
        # Full SFT keeps float32 master weights (bf16 autocast computes); LoRA freezes a bf16 base.
        model_dtype = self.weight_dtype if self.is_lora else torch.float32
        transformer = load_trainable_transformer(c, base, model_dtype)
        transformer.to(self.device)
        if c.train.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if self.is_lora:
            lora_utils.add_lora(transformer, c.lora)
        else:
            transformer.requires_grad_(True)
        transformer.train()
        params = [p for p in transformer.parameters() if p.requires_grad]
        self._log(
            "Training %s parameters (%s).",
            f"{sum(p.numel() for p in params):,}",
            "LoRA adapters" if self.is_lora else "full transformer",
        )
        t = c.train
        optimizer = torch.optim.AdamW(
            params,
            lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_epsilon,
            weight_decay=t.weight_decay,
        )
        processes = self.accelerator.num_processes
        lr_scheduler = get_scheduler(
            t.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=t.lr_warmup_steps * processes,
            num_training_steps=t.max_steps * processes,
            num_cycles=t.lr_num_cycles,
        )
        samples = TrainingSamples(self.train_clips, self.prompt_cache, self.latent_cache)
        loader = DataLoader(
            samples,
            batch_size=t.batch_size,
            shuffle=True,
            num_workers=c.data.num_workers,
            drop_last=len(samples) >= t.batch_size,
            persistent_workers=c.data.num_workers > 0,
        )
        self.transformer, self.optimizer, self.loader, self.lr_scheduler = self.accelerator.prepare(
            transformer, optimizer, loader, lr_scheduler
        )
        self.accelerator.register_save_state_pre_hook(self._save_hook)
        self.accelerator.register_load_state_pre_hook(self._load_hook)
        self.pipe = CachedPromptPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=self.vae,
            transformer=self.unwrapped,
            scheduler=CogVideoXDPMScheduler.from_config(self.scheduler.config),
        )
        self.pipe.prompt_cache = self.prompt_cache
        self.pipe.set_progress_bar_config(disable=True)

    @property
    def unwrapped(self) -> DynamiCtrlTransformerModel:
        return self.accelerator.unwrap_model(self.transformer)

    # ------------------------------------------------------------------ saving
    def export_weights(self, model: DynamiCtrlTransformerModel, folder: Path) -> Path:
        """The deliverable weights: `folder/transformer/` or `folder/lora/` (safetensors)."""
        if self.is_lora:
            lora_utils.save_lora(model, folder / "lora")
            return folder / "lora"
        model.save_pretrained(folder / "transformer", safe_serialization=True)
        return folder / "transformer"

    def _save_hook(self, models, weights_list, output_dir) -> None:
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(models[0] if models else self.transformer)
            self.export_weights(model, Path(output_dir))
        if weights_list:
            # Outside DeepSpeed the export above is the model's checkpoint; accelerate must
            # not write the whole transformer (or, with LoRA, its frozen base) a second time.
            weights_list.pop()

    def _load_hook(self, models, input_dir) -> None:
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED or not models:
            return  # DeepSpeed restores the module from its own checkpoint files
        model = self.accelerator.unwrap_model(models.pop())
        if self.is_lora:
            lora_utils.load_lora_into_trainable(model, Path(input_dir) / "lora")
        else:
            _load_full_weights(model, Path(input_dir) / "transformer")

    def save_checkpoint(self) -> Path:
        path = self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.global_step}"
        limit = self.config.train.checkpoints_total_limit
        if self.accelerator.is_main_process and limit is not None:
            existing = [p for p in list_checkpoints(self.output_dir) if p != path]
            for old in existing[: max(0, len(existing) + 1 - limit)]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            # Written last: a checkpoint without it (a run killed while saving) is never resumed.
            state = {"global_step": self.global_step, "lora": self.is_lora, "config": self.config.to_dict()}
            (path / STATE_FILE).write_text(json.dumps(state, indent=2))
        self.accelerator.wait_for_everyone()
        self.checkpoints.append(path)
        self._log("Saved checkpoint %s", path)
        return path

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        c, device = self.config, self.device
        model_dtype = self.unwrapped.dtype
        latent_dtype = torch.float32
        layout = self.layout
        batch_size = batch["reference"].shape[0]

        # Image noise augmentation, as CogVideoX I2V training: sigma = exp(N(mean, std)).
        reference = to_unit_range(batch["reference"]).to(device)
        log_sigma = torch.randn(batch_size, generator=generator) * c.train.image_noise_log_sigma_std
        sigma = (log_sigma + c.train.image_noise_log_sigma_mean).exp().to(device).view(-1, 1, 1, 1)
        reference = reference + sigma * randn_tensor(reference.shape, generator=generator, device=device)

        if "video_posterior" in batch:
            video_posterior = batch["video_posterior"].to(device)
            pose_posterior = batch["pose_posterior"].to(device)
        else:
            video_posterior = encode_posterior(self.vae, to_unit_range(batch["video"]).to(device))
            pose_posterior = encode_posterior(self.vae, to_unit_range(batch["pose"]).to(device))
        scaling = self.vae.config.scaling_factor
        # Draw order of the pipeline: image latent, pose latents; then the target.
        image_latents = encode_image_latents(
            self.vae, reference, layout, generator, c.train.image_latent_scale, latent_dtype
        )
        pose_latents = sample_video_latents(pose_posterior.float(), scaling, layout, generator, latent_dtype)
        latents = sample_video_latents(video_posterior.float(), scaling, layout, generator, latent_dtype)

        keep_image = (torch.rand(batch_size, generator=generator) >= c.train.image_dropout).to(device)
        image_latents = image_latents * keep_image.view(-1, 1, 1, 1, 1).to(latent_dtype)
        prompt_embeds = batch["prompt_embeds"].to(device)
        drop_prompt = (torch.rand(batch_size, generator=generator) < c.data.prompt_dropout).to(device)
        if drop_prompt.any():
            empty = self.empty_prompt_embeds.to(device=device, dtype=prompt_embeds.dtype)
            prompt_embeds = torch.where(drop_prompt.view(-1, 1, 1), empty.unsqueeze(0), prompt_embeds)

        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latent_dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        timesteps = timesteps.to(device)
        noisy_latents = add_noise(self.scheduler, latents, noise, timesteps)

        height, width = batch["reference"].shape[-2:]
        rotary_emb, ofs, _ = self.pipe._step_constants(height, width, layout, noisy_latents, None)
        model_input = torch.cat([noisy_latents, image_latents], dim=2).to(model_dtype)
        with self.accelerator.autocast():
            model_output = self.transformer(
                hidden_states=model_input,
                encoder_hidden_states=prompt_embeds.to(model_dtype),
                timestep=timesteps,
                pose_latents=pose_latents.to(model_dtype),
                ofs=None if ofs is None else ofs.to(model_dtype),
                image_rotary_emb=rotary_emb,
                return_dict=False,
            )[0]
        # The front padding frames are dropped after sampling: they carry no loss.
        real = slice(layout.padding, None)
        loss = v_prediction_loss(
            self.scheduler, model_output[:, real], noisy_latents[:, real], latents[:, real], timesteps
        )
        return loss.mean()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def run_validation(self) -> list[Path]:
        """Samples the first `validation.num_samples` clips with the pipeline (main process)."""
        v = self.config.validation
        written = []
        if self.accelerator.is_main_process and self.validation_clips is not None:
            model = self.unwrapped
            was_training = model.training
            model.eval()
            self.pipe.transformer = model
            folder = self.output_dir / "validation" / f"step-{self.global_step:06d}"
            fps = v.fps or self.validation_clips.manifest.fps
            height, width = self.validation_clips.size
            for index in range(min(v.num_samples, len(self.validation_clips))):
                sample = self.validation_clips[index]
                image = PIL.Image.fromarray(sample["reference"].permute(1, 2, 0).numpy())
                with self.accelerator.autocast():
                    frames = self.pipe(
                        image=image,
                        pose_video=to_unit_range(sample["pose"]),
                        prompt=sample["prompt"],
                        negative_prompt="",
                        height=height,
                        width=width,
                        num_frames=self.config.data.num_frames,
                        num_inference_steps=v.num_inference_steps,
                        guidance_scale=v.guidance_scale,
                        generator=torch.Generator().manual_seed(v.seed),
                        output_type="uint8",
                    ).frames[0]
                name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in sample["key"])
                written.append(write_video(folder / f"{name}.mp4", frames, fps=fps))
            if was_training:
                model.train()
            logger.info("Validation samples of step %d: %s", self.global_step, folder)
            self.validation_videos.extend(written)
        self.accelerator.wait_for_everyone()
        return written

    # ------------------------------------------------------------------ loop
    def _resume(self) -> int:
        """Loads the checkpoint asked for; returns the micro-batches to skip in its epoch."""
        t = self.config.train
        checkpoint = find_checkpoint(self.output_dir, t.resume_from_checkpoint)
        if checkpoint is None:
            if t.resume_from_checkpoint == "latest":
                self._log("No checkpoint in %s: starting a fresh run.", self.output_dir / "checkpoints")
            return 0
        state = read_state(checkpoint)
        if bool(state.get("lora")) != self.is_lora:
            raise ConfigError(
                f"{checkpoint} is a {'LoRA' if state.get('lora') else 'full'} checkpoint; "
                f"lora.enabled is {self.is_lora}."
            )
        self.accelerator.load_state(str(checkpoint))
        self.global_step = int(state["global_step"])
        self._log("Resumed from %s at step %d.", checkpoint, self.global_step)
        return self.global_step

    def train(self) -> TrainResult:
        c = self.config
        a = self.accelerator
        set_seed(c.train.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if a.is_main_process:
            dump_config(c, self.output_dir / "train_config.yaml")
        base = weights.resolve(c.model.pretrained, c.model.weights_dir, c.model.local_files_only)
        self.transformer_config = self._transformer_config(base)
        self._prepare_data(base)
        self._prepare_model(base)
        if c.train.report_to:
            a.init_trackers("dynamictrl-train", config=_flat(c.to_dict()))

        start_step = self._resume()
        accum = c.train.gradient_accumulation_steps
        micro_per_epoch = len(self.loader)
        steps_per_epoch = max(1, math.ceil(micro_per_epoch / accum))
        epoch = start_step // steps_per_epoch
        skip = (start_step % steps_per_epoch) * accum
        log_path = self.output_dir / "train_log.jsonl"
        self._log(
            "%d clips, %d optimizer steps per epoch, training steps %d -> %d.",
            len(self.train_clips),
            steps_per_epoch,
            start_step,
            c.train.max_steps,
        )

        micro, accumulated, started = 0, 0.0, time.perf_counter()
        while self.global_step < c.train.max_steps:
            self.loader.set_epoch(epoch)
            loader = a.skip_first_batches(self.loader, skip) if skip else self.loader
            skip = 0
            for batch in loader:
                generator = step_generator(c.train.seed, a.process_index, self.global_step, micro)
                with a.accumulate(self.transformer):
                    loss = self.compute_loss(batch, generator)
                    a.backward(loss)
                    if a.sync_gradients and c.train.max_grad_norm is not None:
                        a.clip_grad_norm_(self.transformer.parameters(), c.train.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                accumulated += loss.detach().float()
                micro += 1
                if not a.sync_gradients:
                    continue
                step_loss = float(a.reduce(accumulated / micro, reduction="mean"))
                micro, accumulated = 0, 0.0
                self.global_step += 1
                self.losses.append(step_loss)
                self._after_step(step_loss, log_path, started)
                if self.global_step >= c.train.max_steps:
                    break
            epoch += 1

        a.wait_for_everyone()
        weights_path = None
        if a.is_main_process:
            model = self.unwrapped
            if not self.is_lora and model.dtype != self.weight_dtype:
                model.to(self.weight_dtype)  # training is over: export in the inference dtype
            weights_path = self.export_weights(model, self.output_dir)
            logger.info("Wrote %s", weights_path)
        a.wait_for_everyone()
        a.end_training()
        return TrainResult(
            self.global_step, self.losses, self.output_dir, weights_path, self.checkpoints, self.validation_videos
        )

    def _after_step(self, loss: float, log_path: Path, started: float) -> None:
        c, a, step = self.config, self.accelerator, self.global_step
        lr = self.lr_scheduler.get_last_lr()[0]
        if a.is_main_process:
            with log_path.open("a") as log:
                log.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")
            if step % c.train.log_every == 0 or step == c.train.max_steps:
                logger.info(
                    "step %d/%d  loss %.5f  lr %.3g  %.2f s/step",
                    step,
                    c.train.max_steps,
                    loss,
                    lr,
                    (time.perf_counter() - started) / max(1, len(self.losses)),
                )
        if c.train.report_to:
            a.log({"loss": loss, "lr": lr}, step=step)
        every = c.train.checkpointing_steps
        if every and step % every == 0 and step < c.train.max_steps:
            self.save_checkpoint()
        if c.validation.every_steps and step % c.validation.every_steps == 0:
            self.run_validation()

    def _transformer_config(self, base: Path) -> dict:
        m = self.config.model
        if m.transformer is not None:
            folder = weights.resolve(m.transformer, m.weights_dir, m.local_files_only)
            if not (folder / "config.json").is_file():
                folder = folder / "transformer"
        elif m.variant is not None:
            folder = weights.resolve(weights.variant_repo(m.variant), m.weights_dir, m.local_files_only)
        else:
            folder = base / "transformer"
        path = folder / "config.json"
        if not path.is_file():
            raise ConfigError(f"No transformer config at {path}.")
        return json.loads(path.read_text())


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def train(config: Config) -> TrainResult:
    """Runs a training (or continues one: `train.resume_from_checkpoint`)."""
    return Trainer(config).train()
