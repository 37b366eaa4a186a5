"""Training latents, written exactly as the pipeline writes them at inference.

- Pose latents: the pose video in [-1, 1] through the *same* VAE, a posterior sample
  times `scaling_factor`, front-padded like the noise (`DynamiCtrlPipeline.encode_pose_latents`).
- Target latents: the clip through the VAE, sample times `scaling_factor` (what the
  pipeline's decode divides by), front-padded the same way.
- Image latent: the reference as one frame, sample times `image_latent_scale`, then
  zero frames and the same front padding (`DynamiCtrlPipeline.encode_condition_latents`).
  The pipeline uses x1.0 (the VAE's `invert_scale_latents`); the official training code
  used x0.7. Training defaults to x1.0 so that a model trained here sees at training
  what the pipeline gives it at inference; `train.image_latent_scale: 0.7` reproduces
  the official training instead.

The VAE posteriors of clips and poses can be cached (`LatentCache`): their parameters
(mean, log-variance) are stored once and a fresh sample is drawn at every step, so
caching changes nothing but the speed. T5 embeddings are cached per distinct prompt
(`PromptCache`), so the 9.5 GB text encoder is loaded once and freed before training.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import retrieve_latents
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ..pipeline import LatentLayout, pad_front
from .dataset import ClipDataset, ClipRef, to_unit_range


def fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """Written under a temporary name and renamed: a killed run never leaves a torn file
    that a resumed run would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(partial), metadata=metadata)
    os.replace(partial, path)


# ---------------------------------------------------------------------- VAE latents
@torch.no_grad()
def encode_posterior(vae, frames: torch.Tensor) -> torch.Tensor:
    """Frames (B, T, 3, H, W) in [-1, 1] -> posterior parameters (B, 2C, F, h, w)
    (mean and log-variance on channels, in the VAE's dtype)."""
    video = frames.permute(0, 2, 1, 3, 4).to(device=vae.device, dtype=vae.dtype)
    return vae.encode(video).latent_dist.parameters


def sample_video_latents(
    posterior: torch.Tensor,
    scaling_factor: float,
    layout: LatentLayout,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Posterior parameters -> latents (B, F, C, h, w): one sample times `scaling_factor`,
    front-padded. The formula of the pipeline's pose latents; also the target's."""
    latents = DiagonalGaussianDistribution(posterior).sample(generator)
    latents = scaling_factor * latents.permute(0, 2, 1, 3, 4).to(dtype)
    return pad_front(latents, layout.padding)


@torch.no_grad()
def encode_image_latents(
    vae,
    image: torch.Tensor,
    layout: LatentLayout,
    generator: torch.Generator | None,
    scale: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Reference images (B, 3, H, W) in [-1, 1] -> image latents (B, F, C, h, w): one
    encoded frame times `scale`, zero frames up to the latent count, front padding.
    Images are encoded one by one, as the pipeline does (same generator draws)."""
    image = image.unsqueeze(2).to(device=vae.device, dtype=vae.dtype)
    latents = torch.cat([retrieve_latents(vae.encode(img.unsqueeze(0)), generator) for img in image])
    latents = scale * latents.to(dtype).permute(0, 2, 1, 3, 4)
    zeros = latents.new_zeros((latents.shape[0], layout.latent_frames - 1, *latents.shape[2:]))
    return pad_front(torch.cat([latents, zeros], dim=1), layout.padding)


def inference_image_latent_scale(vae) -> float:
    """The multiplier the pipeline applies to the image latent (1.0 for the released VAE)."""
    return 1.0 if vae.config.invert_scale_latents else float(vae.config.scaling_factor)


class LatentCache:
    """Posterior parameters of each clip's video and poses, plus its reference pixels,
    one safetensors file per clip under `folder` (a folder per VAE/data fingerprint)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def for_run(cls, cache_dir: Path, vae, dataset: ClipDataset, extra: dict) -> "LatentCache":
        key = fingerprint(
            {
                "vae": dict(vae.config),
                "dtype": str(vae.dtype),
                "num_frames": dataset.num_frames,
                "size": dataset.size,
                "data": str(dataset.manifest.root.resolve()),
                **extra,
            }
        )
        return cls(Path(cache_dir) / f"latents-{key}")

    @staticmethod
    def clip_key(clip: ClipRef) -> str:
        """The clip plus the size and time of its files: a re-prepared video is re-encoded."""
        stamps = []
        for path in (clip.item.video, clip.item.pose, clip.item.mask if clip.masked else None):
            if path is not None:
                stat = path.stat()
                stamps.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join([clip.key, *stamps])

    def path(self, clip: ClipRef) -> Path:
        digest = hashlib.sha256(self.clip_key(clip).encode()).hexdigest()[:24]
        return self.folder / f"{digest}.safetensors"

    def has(self, clip: ClipRef) -> bool:
        return self.path(clip).is_file()

    def save(self, clip: ClipRef, video: torch.Tensor, pose: torch.Tensor, reference: torch.Tensor) -> None:
        tensors = {"video": video, "pose": pose, "reference": reference}
        _atomic_save(tensors, self.path(clip), {"clip": clip.key})

    def load(self, clip: ClipRef) -> dict[str, torch.Tensor]:
        return load_file(str(self.path(clip)))

    def fill(self, dataset: ClipDataset, vae, indices) -> int:
        """Encodes the clips of `indices` that are not cached yet; returns how many."""
        done = 0
        for index in indices:
            clip = dataset.clips[index]
            if self.has(clip):
                continue
            sample = dataset[index]
            video = encode_posterior(vae, to_unit_range(sample["video"])[None])[0]
            pose = encode_posterior(vae, to_unit_range(sample["pose"])[None])[0]
            self.save(clip, video, pose, sample["reference"])
            done += 1
        return done


# ---------------------------------------------------------------------- text
class PromptCache:
    """T5 embeddings (L, D) per distinct prompt, one safetensors file each."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def for_run(cls, cache_dir: Path, text_encoder_config: dict, max_sequence_length: int, dtype) -> "PromptCache":
        key = fingerprint({"t5": text_encoder_config, "length": max_sequence_length, "dtype": str(dtype)})
        return cls(Path(cache_dir) / f"text-{key}")

    def path(self, prompt: str) -> Path:
        return self.folder / f"{hashlib.sha256(prompt.encode()).hexdigest()[:24]}.safetensors"

    def missing(self, prompts) -> list[str]:
        return [p for p in dict.fromkeys(prompts) if not self.path(p).is_file()]

    @torch.no_grad()
    def fill(self, pipe, prompts, max_sequence_length: int, device, dtype, batch_size: int = 8) -> int:
        """Encodes the prompts not cached yet with the pipeline's own prompt encoder."""
        todo = self.missing(prompts)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            embeds, _ = pipe.encode_prompt(
                prompt=chunk,
                do_classifier_free_guidance=False,
                max_sequence_length=max_sequence_length,
                device=device,
                dtype=dtype,
            )
            for prompt, embed in zip(chunk, embeds, strict=True):
                _atomic_save({"prompt_embeds": embed}, self.path(prompt), {"prompt": prompt[:2000]})
        return len(todo)

    def load(self, prompt: str) -> torch.Tensor:
        path = self.path(prompt)
        if not path.is_file():
            raise KeyError(f"No cached embedding for prompt {prompt[:60]!r}")
        return load_file(str(path))["prompt_embeds"]


# ---------------------------------------------------------------------- samples
class TrainingSamples(Dataset):
    """What a training step needs per clip: prompt embeddings, and either the cached
    posteriors (`video_posterior`, `pose_posterior`) or the decoded pixels (`video`,
    `pose`), plus the `reference` pixels (uint8) that are noised and encoded every step."""

    def __init__(self, clips: ClipDataset, prompts: PromptCache, latents: LatentCache | None):
        self.clips = clips
        self.prompts = prompts
        self.latents = latents

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips.clips[index]
        sample = {"index": index, "prompt_embeds": self.prompts.load(clip.item.prompt)}
        if self.latents is not None:
            cached = self.latents.load(clip)
            sample.update(video_posterior=cached["video"], pose_posterior=cached["pose"], reference=cached["reference"])
        else:
            decoded = self.clips[index]
            sample.update(video=decoded["video"], pose=decoded["pose"], reference=decoded["reference"])
        return sample
