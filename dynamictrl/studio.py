"""The Python API: one `Studio` object that validates inputs, runs the stages and
writes outputs with a manifest. The CLI and the app are thin adapters over it.

    from dynamictrl.studio import Studio, GenerateSettings
    studio = Studio()
    result = studio.generate("ref.png", "pose.mp4", "out.mp4", GenerateSettings(prompt="a dancer ..."))
"""

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from . import weights
from .video import read_video, write_video

DTYPES = ("auto", "bf16", "fp16", "fp32")
MAX_SIDE = 2048  # the paper's largest is 1360x1360; beyond this the 5B model runs out of any GPU

# progress(fraction in [0, 1], message); return value ignored.
ProgressCallback = Callable[[float, str], None]


@dataclass
class GenerateSettings:
    prompt: str
    negative_prompt: str = ""
    num_frames: int = 37
    width: int = 768
    height: int = 1360
    steps: int = 25
    guidance: float = 3.0
    seed: int = 42
    fps: float = 16.0
    variant: str | None = None
    dtype: str = "auto"


@dataclass
class GenerateResult:
    video_path: Path
    manifest_path: Path
    frames: np.ndarray = field(repr=False)  # (T, H, W, 3) uint8
    elapsed_s: float


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    from . import __version__

    versions = {"python": platform.python_version(), "dynamictrl": __version__}
    for name in ("torch", "diffusers", "transformers", "accelerate", "huggingface-hub", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load_image(path: str | Path) -> Image.Image:
    """Opens any image PIL reads (16-bit, palette, alpha...) as 8-bit RGB."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Reference image not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"Could not read the reference image {path.name} ({error}); save it as PNG or JPEG.") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything to white.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255.0).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become black, the colour the masked-reference models expect.
        background = Image.new("RGB", image.size, (0, 0, 0))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def resolve_dtype(name: str, device: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}.")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Studio:
    """Holds loaded pipelines between calls (one per model/variant/dtype)."""

    def __init__(self, model: str = weights.BASE_REPO, weights_dir: str | Path | None = None, device: str | None = None):
        self.model = model
        self.weights_dir = weights_dir
        self.device = device or default_device()
        self._pipelines = {}

    def pipeline(self, variant: str | None, dtype: str):
        """The DynamiCtrl pipeline for this variant and dtype, loaded once."""
        torch_dtype = resolve_dtype(dtype, self.device)
        key = (variant, torch_dtype)
        if key not in self._pipelines:
            from .pipeline import DynamiCtrlPipeline

            # Only one pipeline stays in memory: a new variant replaces the old one.
            self._pipelines.clear()
            pipe = DynamiCtrlPipeline.from_pretrained(
                self.model, variant=variant, torch_dtype=torch_dtype, weights_dir=self.weights_dir
            )
            if self.device.startswith("cuda"):
                # Text encoder, transformer and VAE visit the GPU one at a time.
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
            self._pipelines[key] = pipe
        return self._pipelines[key]

    def generate(
        self,
        image_path: str | Path,
        pose_video_path: str | Path,
        out_path: str | Path,
        settings: GenerateSettings,
        progress: ProgressCallback | None = None,
    ) -> GenerateResult:
        """Animates the reference image with an already rendered pose video; writes
        the mp4 and, beside it, `<name>.json` with every setting and input hash."""
        import torch

        started = time.perf_counter()
        out_path = Path(out_path)
        if out_path.suffix.lower() != ".mp4":
            raise ValueError(f"The output must be an .mp4 file, got {out_path.name}.")
        if not settings.prompt or not settings.prompt.strip():
            raise ValueError("The prompt is empty: describe the person and the background (the model was trained so).")
        if not (16 <= settings.width <= MAX_SIDE and 16 <= settings.height <= MAX_SIDE):
            raise ValueError(
                f"Resolution {settings.width}x{settings.height} is out of range: width and height must be 16..{MAX_SIDE} "
                "(the official sizes are 768x1360, 576x1024, 1024x1024, 1360x1360)."
            )
        weights.variant_repo(settings.variant)
        resolve_dtype(settings.dtype, self.device)

        image = load_image(image_path)
        pose = read_video(pose_video_path, max_frames=settings.num_frames)
        if pose.num_frames < settings.num_frames:
            usable = (pose.num_frames - 1) // 4 * 4 + 1
            raise ValueError(
                f"The pose video has {pose.num_frames} frames, fewer than the {settings.num_frames} asked for: "
                f"use --frames {usable} or a longer pose video."
            )
        pose_frames = list(pose.frames[: settings.num_frames])

        pipe = self.pipeline(settings.variant, settings.dtype)

        def on_step(pipeline, step, timestep, tensors):
            if progress is not None:
                progress((step + 1) / settings.steps, f"denoising step {step + 1}/{settings.steps}")
            return {}

        generator = torch.Generator().manual_seed(settings.seed)
        frames = pipe(
            image=image,
            pose_video=pose_frames,
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            height=settings.height,
            width=settings.width,
            num_frames=settings.num_frames,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=generator,
            output_type="np",
            callback_on_step_end=on_step,
        ).frames[0]
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
        write_video(out_path, frames, fps=settings.fps)
        elapsed = time.perf_counter() - started

        manifest_path = out_path.with_suffix(".json")
        manifest = {
            "output": out_path.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": asdict(settings),
            "models": {
                "base": str(self.model),
                "transformer": weights.variant_repo(settings.variant) or f"{self.model} (transformer/)",
            },
            "inputs": {
                "image": {"path": str(image_path), "sha256": file_sha256(image_path), "size_wh": list(image.size)},
                "pose_video": {
                    "path": str(pose_video_path),
                    "sha256": file_sha256(pose_video_path),
                    "frames_used": settings.num_frames,
                    "fps": pose.fps,
                },
            },
            "device": self.device,
            "torch_dtype": str(pipe.transformer.dtype).replace("torch.", ""),
            "versions": package_versions(),
            "elapsed_s": round(elapsed, 3),
        }
        manifest_path.write_text(json.dumps(manifest, indent=2))
        return GenerateResult(video_path=out_path, manifest_path=manifest_path, frames=frames, elapsed_s=elapsed)
