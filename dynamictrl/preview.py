"""Live previews: the video as it forms, every few denoising steps, for almost nothing.

The DPM scheduler predicts the clean latents x0 at every step. Instead of the VAE
(seconds per call on a GPU), a preview maps each latent pixel to RGB with one linear
projection (16 latent channels -> 3 colours plus a bias): a 4D einsum over latents that
are 8x smaller than the video, so one frame per latent frame at 1/8 of the size.

The projection is fitted to the VAE itself: synthetic clips (smooth colour fields that
drift) are encoded and decoded, and least squares maps the (scaled) latents onto the
decoded RGB averaged over each latent pixel's 8x8 patch and 4 frames. Fitting takes one
encode/decode of a few 64x64 clips; the result is kept per VAE in memory and, keyed by
the VAE's config and weights, in a small JSON file under the cache folder.
"""

import hashlib
import io
import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_EVERY = 5  # denoising steps between previews (the app's default)


@dataclass(frozen=True)
class LatentRGBProjection:
    """rgb = latents . weight + bias, in [0, 1]; latents as the pipeline holds them
    (scaled by the VAE's scaling factor)."""

    weight: tuple[tuple[float, float, float], ...]  # (C, 3)
    bias: tuple[float, float, float]
    fit_rmse: float  # on the fitting data, RGB in [0, 1]

    def to_json(self) -> str:
        return json.dumps({"weight": self.weight, "bias": self.bias, "fit_rmse": self.fit_rmse})

    @classmethod
    def from_json(cls, text: str) -> "LatentRGBProjection":
        data = json.loads(text)
        return cls(tuple(tuple(row) for row in data["weight"]), tuple(data["bias"]), data["fit_rmse"])

    def project(self, latents) -> np.ndarray:
        """Latents (B, F, C, h, w) (torch, any device) -> uint8 frames (B, F, h, w, 3) on the host.
        The work stays on the latents' device; only the small uint8 result is copied."""
        import torch

        weight = torch.tensor(self.weight, dtype=torch.float32, device=latents.device)
        bias = torch.tensor(self.bias, dtype=torch.float32, device=latents.device)
        rgb = torch.einsum("bfchw,cd->bfhwd", latents.float(), weight) + bias
        return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@dataclass
class Preview:
    """One live preview: frames (F, h, w, 3) uint8 at 1/8 of the video size, one per latent frame."""

    step: int  # denoising steps done
    steps: int
    frames: np.ndarray = field(repr=False)

    def strip(self, max_frames: int = 4) -> np.ndarray:
        """Up to `max_frames` frames, evenly spread, side by side: one small image."""
        count = len(self.frames)
        picks = np.unique(np.linspace(0, count - 1, min(max_frames, count)).round().astype(int))
        return np.concatenate([self.frames[i] for i in picks], axis=1)

    def png_bytes(self, max_frames: int = 4) -> bytes:
        """`strip()` as PNG (for a job status over HTTP, or a file)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.strip(max_frames)).save(buffer, format="PNG")
        return buffer.getvalue()


PreviewCallback = Callable[[Preview], None]


def synthetic_clips(count: int, frames: int, size: int, seed: int = 0):
    """Smooth random colour fields with gradients that drift over time, in [-1, 1]:
    (count, 3, frames, size, size). Covers the colours and low frequencies a preview shows."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(count):
        coarse = torch.rand((1, 3, 4, 4), generator=generator) * 2 - 1
        field_ = F.interpolate(coarse, size=(size * 2, size * 2), mode="bicubic", align_corners=False)[0]
        shift = int(torch.randint(1, size // 4, (1,), generator=generator))
        video = torch.stack(
            [field_[:, t * shift : t * shift + size, t * shift : t * shift + size] for t in range(frames)], dim=1
        )
        clips.append(video.clamp(-1, 1))
    return torch.stack(clips)


def fit_projection(vae, clips: int = 3, frames: int = 5, size: int = 64, seed: int = 0) -> LatentRGBProjection:
    """Least squares from the VAE's (scaled) latents to its decoded RGB, pooled to the
    latent grid: latent frame 0 <-> decoded frame 0, latent frame k <-> frames 4k-3..4k."""
    import torch
    import torch.nn.functional as F

    temporal = getattr(vae.config, "temporal_compression_ratio", 4)
    scaling = vae.config.scaling_factor
    features, targets = [], []
    videos = synthetic_clips(clips, frames, size, seed).to(vae.device, vae.dtype)
    with torch.no_grad():
        for video in videos:
            latents = vae.encode(video[None]).latent_dist.mode()  # (1, C, f, h, w)
            decoded = vae.decode(latents).sample.float()  # (1, 3, T, H, W) in [-1, 1]
            rgb = (decoded / 2 + 0.5).clamp(0, 1)
            h, w = latents.shape[-2:]
            for k in range(latents.shape[2]):
                start, stop = (0, 1) if k == 0 else (temporal * (k - 1) + 1, temporal * k + 1)
                stop = min(stop, rgb.shape[2])
                if start >= stop:
                    break
                target = F.adaptive_avg_pool2d(rgb[0, :, start:stop].mean(dim=1), (h, w))  # (3, h, w)
                features.append((scaling * latents[0, :, k].float()).flatten(1).T)  # (h*w, C)
                targets.append(target.flatten(1).T)  # (h*w, 3)
    x = torch.cat(features).double()
    y = torch.cat(targets).double()
    x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    solution = torch.linalg.lstsq(x1.cpu(), y.cpu()).solution  # (C + 1, 3)
    rmse = float(((x1.cpu() @ solution - y.cpu()) ** 2).mean().sqrt())
    weight = tuple(tuple(float(v) for v in row) for row in solution[:-1].tolist())
    bias = tuple(float(v) for v in solution[-1].tolist())
    return LatentRGBProjection(weight, bias, rmse)


def vae_key(vae) -> str:
    """Identifies a VAE by its config and a sample of its weights (cheap: no full hash)."""
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    parameters = list(vae.parameters())
    for tensor in (parameters[0], parameters[len(parameters) // 2], parameters[-1]):
        digest.update(tensor.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


_FITTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def projection_for(vae, cache_dir: str | Path | None = None) -> LatentRGBProjection:
    """The fitted projection of `vae`: from memory, else from `cache_dir/previews/<key>.json`,
    else fitted now (once) and stored in both."""
    if vae in _FITTED:
        return _FITTED[vae]
    path = Path(cache_dir) / "previews" / f"{vae_key(vae)}.json" if cache_dir is not None else None
    projection = None
    if path is not None and path.is_file():
        try:
            projection = LatentRGBProjection.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("Ignoring an unreadable preview projection %s (%s); fitting it again.", path, error)
    if projection is None:
        projection = fit_projection(vae)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(projection.to_json())
    _FITTED[vae] = projection
    return projection


class PreviewMaker:
    """A diffusers `callback_on_step_end` that turns the scheduler's x0 estimate into a
    `Preview` every `every` steps (and at the last step) and hands it to `callback`.

    `latent_frames`: latent frames of the output (the front padding of odd counts and
    the shared head of long clips are dropped: the last `latent_frames` are the video)."""

    tensor_inputs = ["latents", "pred_original_sample"]

    def __init__(
        self, projection: LatentRGBProjection, callback: PreviewCallback, every: int, steps: int, latent_frames: int
    ):
        if every < 1:
            raise ValueError(f"preview_every must be >= 1, got {every}.")
        self.projection, self.callback, self.every, self.steps = projection, callback, every, steps
        self.latent_frames = latent_frames

    def due(self, step: int) -> bool:
        done = step + 1
        return done % self.every == 0 or done == self.steps

    def __call__(self, pipeline, step: int, timestep, tensors: dict) -> dict:
        if self.due(step):
            x0 = tensors.get("pred_original_sample")
            if x0 is None:  # a scheduler without an x0 estimate: the noisy latents still show the layout
                x0 = tensors["latents"]
            frames = self.projection.project(x0[:1, -self.latent_frames :])[0]
            self.callback(Preview(step + 1, self.steps, frames))
        return {}
