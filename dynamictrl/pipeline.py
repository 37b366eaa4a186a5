"""DynamiCtrl sampling pipeline: reference image + pose video + prompt -> video.

Extends diffusers' `CogVideoXImageToVideoPipeline` (prompt encoding, RoPE, decoding are
inherited unchanged) with the DynamiCtrl specifics from the official release:

- the pose video is encoded by the *same* VAE and multiplied by the scaling factor;
- the image latent is *not* scaled at inference (x1.0, `invert_scale_latents`);
- one generator is consumed in the official order: image latent sample, pose latent
  sample, initial noise, then one draw per DPM step - so a seed gives the official video.

Read `__call__` (inputs, text, timesteps) then `_sample` (conditions, noise, the one
denoising loop for one window or many, decoding) top to bottom.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import (
    CogVideoXImageToVideoPipeline,
    retrieve_latents,
)
from diffusers.pipelines.cogvideo.pipeline_output import CogVideoXPipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import T5EncoderModel, T5Tokenizer

from . import longvideo, weights
from .models.transformer import DynamiCtrlTransformerModel
from .settings import GenerateSettings
from .validation import check_frames, check_positional_grid, check_setting, check_size, check_window, positional_grid_px

logger = logging.get_logger(__name__)

# Defaults of the official inference command.
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0
OFS = 2.0

OUTPUT_TYPES = ("pil", "np", "pt", "uint8", "latent")


@dataclass
class LatentLayout:
    """How T pixel frames map onto latent frames, including the padding that
    patch_size_t = 2 needs when the latent count is odd."""

    num_frames: int  # pixel frames asked for (4k + 1)
    latent_frames: int  # (T - 1) // 4 + 1
    padding: int  # latent frames added at the front, dropped after sampling

    @property
    def padded_latent_frames(self) -> int:
        return self.latent_frames + self.padding


def latent_layout(num_frames: int, temporal_compression: int, patch_size_t: int | None) -> LatentLayout:
    latent_frames = (num_frames - 1) // temporal_compression + 1
    padding = 0
    if patch_size_t is not None and latent_frames % patch_size_t:
        padding = patch_size_t - latent_frames % patch_size_t
    return LatentLayout(num_frames, latent_frames, padding)


def pose_in_unit_range(pose: torch.Tensor) -> torch.Tensor:
    """uint8 pose frames -> float x / 127.5 - 1; float frames are already in [-1, 1]."""
    return pose.float() / 127.5 - 1 if pose.dtype == torch.uint8 else pose


def frames_to_uint8_tensor(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 1] -> uint8 on their device, `round(clip(x, 0, 1) * 255)` in
    float32: the same operations as `longvideo.frames_to_uint8`, so both give the bits of
    converting the "np" output afterwards."""
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)


class PoseVideo:
    """The pose video as the sampler reads it: a few frames at a time (one window's),
    so a long clip's poses are never converted, resized or moved to the device whole.

    `source`: a tensor (T, 3, H, W) or (B, T, 3, H, W) in [-1, 1]; or a sequence of T RGB
    frames (PIL images or uint8 (H, W, 3) arrays): a list, or any object with `len` and
    indexing that draws or decodes frames on demand (`pose.sequence.PoseFrames`,
    `video.VideoFrames`), read only for the frames a window needs. Sequences are kept
    as uint8 until read (4x smaller than float, see `pose_in_unit_range`)."""

    def __init__(self, source):
        self.source = source
        if isinstance(source, torch.Tensor):
            video = source.unsqueeze(0) if source.ndim == 4 else source
            if video.ndim != 5 or video.shape[2] != 3:
                raise ValueError(
                    f"pose_video tensor must be (T, 3, H, W) or (B, T, 3, H, W) in [-1, 1], got {tuple(video.shape)}."
                )
            if video.min() < -1.001 or video.max() > 1.001:
                raise ValueError("pose_video tensor values must be in [-1, 1] (use frames / 127.5 - 1).")
            self.tensor = video.float()
            self.batch, self.num_frames, _, self.height, self.width = self.tensor.shape
            return
        if (
            isinstance(source, (str, bytes, dict))
            or not hasattr(source, "__len__")
            or not hasattr(source, "__getitem__")
            or len(source) == 0
        ):
            raise ValueError("pose_video must be a tensor (T, 3, H, W) in [-1, 1] or a non-empty list of T images.")
        self.tensor = None
        self.batch, self.num_frames = 1, len(source)
        self.height, self.width = self._frame(0).shape[:2]
        if isinstance(source, (list, tuple)):  # frames already in memory: checked now, all of them
            for index in range(1, self.num_frames):
                self._frame(index)

    def _frame(self, index: int) -> np.ndarray:
        frame = self.source[index]
        array = np.asarray(frame.convert("RGB") if isinstance(frame, PIL.Image.Image) else frame)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError("pose_video frames must be RGB images (PIL or uint8 arrays of shape (H, W, 3)).")
        if index and array.shape[:2] != (self.height, self.width):
            raise ValueError("All pose_video frames must have the same size.")
        return array

    def read(self, indices) -> torch.Tensor:
        """Frames `indices` as they were given: (B, n, 3, H, W), float for a tensor source,
        uint8 for a sequence."""
        indices = [int(i) for i in indices]
        if self.tensor is not None:
            return self.tensor.index_select(1, torch.as_tensor(indices, device=self.tensor.device))
        frames = np.stack([self._frame(i) for i in indices])
        return torch.from_numpy(frames).permute(0, 3, 1, 2).unsqueeze(0)

    def window(self, indices, height: int, width: int, batch_size: int, device) -> torch.Tensor:
        """Frames `indices` ready for the VAE: (batch_size, n, 3, height, width) in [-1, 1] on
        `device`. A pose video of another size is resized on the host first (bilinear,
        antialiased, clamped), frame by frame as for the whole video."""
        pose = self.read(indices)
        if (self.height, self.width) != (height, width):
            pose = pose_in_unit_range(pose)
            pose = F.interpolate(pose.flatten(0, 1), size=(height, width), mode="bilinear", antialias=True)
            pose = pose.unflatten(0, (self.batch, -1)).clamp(-1, 1)
        if pose.shape[0] == 1 and batch_size > 1:
            pose = pose.expand(batch_size, -1, -1, -1, -1)
        return pose_in_unit_range(pose.to(device))


def pad_front(latents: torch.Tensor, padding: int) -> torch.Tensor:
    """Repeat the first `padding` latent frames at the front (dim 1)."""
    if padding == 0:
        return latents
    return torch.cat([latents[:, :padding], latents], dim=1)


def load_shared_components(base: str | Path, torch_dtype: torch.dtype | None = None) -> dict:
    """Tokenizer, text encoder, VAE and scheduler of the base folder: the parts every
    transformer variant shares. Loaded with low_cpu_mem_usage (mmap'd safetensors)."""
    dtype_kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    return {
        "tokenizer": T5Tokenizer.from_pretrained(base, subfolder="tokenizer"),
        "text_encoder": T5EncoderModel.from_pretrained(
            base, subfolder="text_encoder", **({} if torch_dtype is None else {"dtype": torch_dtype})
        ),
        "vae": AutoencoderKLCogVideoX.from_pretrained(base, subfolder="vae", **dtype_kwargs),
        "scheduler": CogVideoXDPMScheduler.from_pretrained(base, subfolder="scheduler", timestep_spacing="trailing"),
    }


def load_transformer(
    base: str | Path,
    variant: str | None = None,
    torch_dtype: torch.dtype | None = None,
    weights_dir: str | None = None,
    local_files_only: bool = False,
) -> DynamiCtrlTransformerModel:
    """The base transformer (`base/transformer/`) or a mask variant's (its repo root)."""
    dtype_kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    variant_repo = weights.variant_repo(variant)
    if variant_repo is None:
        return DynamiCtrlTransformerModel.from_pretrained(base, subfolder="transformer", **dtype_kwargs)
    variant_path = weights.resolve(variant_repo, weights_dir, local_files_only)
    return DynamiCtrlTransformerModel.from_pretrained(variant_path, **dtype_kwargs)


class DynamiCtrlPipeline(CogVideoXImageToVideoPipeline):
    r"""Pose-guided human image animation with DynamiCtrl (CogVideoX-1.5-5B-I2V + PadaLN).

    Components: `tokenizer` (T5), `text_encoder` (T5 v1.1 XXL encoder), `vae`
    (CogVideoX-1.5 causal VAE), `transformer` (`DynamiCtrlTransformerModel`), `scheduler`
    (`CogVideoXDPMScheduler`, trailing timesteps).
    """

    # "pred_original_sample": the scheduler's x0 estimate of this step (live previews, see
    # preview.py); None for schedulers that do not make one.
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "pred_original_sample"]
    # Set by the model manager's placement (`manager.place_pipeline`): the device a job runs
    # on, and the device of a text encoder kept out of the offload hooks (T5 on the CPU).
    execution_device: str | None = None
    text_encoder_device: str | None = None

    @property
    def _execution_device(self) -> torch.device:
        if self.execution_device is not None:
            return torch.device(self.execution_device)
        return super()._execution_device

    def _get_t5_prompt_embeds(
        self,
        prompt=None,
        num_videos_per_prompt: int = 1,
        max_sequence_length: int = 226,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """T5 embeddings on `device`, computed wherever the text encoder lives."""
        device = device or self._execution_device
        encoder_device = torch.device(self.text_encoder_device) if self.text_encoder_device else device
        embeds = super()._get_t5_prompt_embeds(
            prompt, num_videos_per_prompt, max_sequence_length, encoder_device, dtype
        )
        return embeds.to(device)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str = weights.BASE_REPO,
        variant: str | None = None,
        torch_dtype: torch.dtype | None = None,
        weights_dir: str | None = None,
        local_files_only: bool = False,
        enable_vae_tiling: bool = True,
    ) -> "DynamiCtrlPipeline":
        """Loads the pipeline from a folder in the `gulucaptain/DynamiCtrl` layout or a hub id.

        `variant`: None (base), "mask_background" (Mask_B01) or "mask_clothing" (Mask_C01);
        a variant replaces only the transformer. Each component is loaded explicitly from
        its subfolder, so the hub folder's `model_index.json` is never trusted for class paths.
        VAE slicing and tiling are on by default, as in the official inference script.
        """
        weights.variant_repo(variant)  # validates before any download
        base = weights.resolve(pretrained_model_name_or_path, weights_dir, local_files_only)
        shared = load_shared_components(base, torch_dtype)
        transformer = load_transformer(base, variant, torch_dtype, weights_dir, local_files_only)
        pipe = cls(transformer=transformer, **shared)
        if enable_vae_tiling:
            pipe.vae.enable_slicing()
            pipe.vae.enable_tiling()
        return pipe

    # ------------------------------------------------------------------ inputs
    def check_dynamictrl_inputs(self, prompt, negative_prompt, height, width, num_frames, pose_frames, output_type):
        if isinstance(prompt, list) and len(prompt) == 0:
            raise ValueError("`prompt` is an empty list: give one prompt string, or a list with one per video.")
        if not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
        if isinstance(prompt, list) and isinstance(negative_prompt, list) and len(negative_prompt) != len(prompt):
            raise ValueError(
                f"{len(negative_prompt)} negative prompts for {len(prompt)} prompts: give one per prompt, or one string."
            )
        # The rules are `dynamictrl.validation`'s; this model's VAE and patch size set the numbers.
        check_size(
            width, height, multiple=self.vae_scale_factor_spatial * self.transformer.config.patch_size, max_side=None
        )
        config = self.transformer.config
        if config.use_rotary_positional_embeddings and config.patch_size_t is not None:
            # The "slice" RoPE grid only covers sample_height x sample_width latents.
            check_positional_grid(
                width,
                height,
                *positional_grid_px((config.sample_height, config.sample_width), self.vae_scale_factor_spatial),
            )
        check_frames(num_frames, k=self.vae_scale_factor_temporal)
        if pose_frames != num_frames:
            raise ValueError(
                f"The pose video has {pose_frames} frames but num_frames is {num_frames}: they must be equal "
                "(frame 0 is the reference pose). Pass num_frames=None to use the pose video's length, "
                "or trim the pose video."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")

    @staticmethod
    def pose_video_to_tensor(pose_video) -> torch.Tensor:
        """A whole pose video as (B, T, 3, H, W): float in [-1, 1] for tensor input, uint8 for
        a list of images (see `pose_in_unit_range`). The sampler itself reads `PoseVideo`
        window by window instead."""
        video = PoseVideo(pose_video)
        return video.read(range(video.num_frames))

    # ------------------------------------------------------------------ latents
    def encode_condition_latents(
        self,
        image: torch.Tensor,
        pose_video: torch.Tensor,
        layout: LatentLayout,
        generator: torch.Generator | list[torch.Generator] | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image latents (B, F, C, h, w) and pose latents (B, F, C, h, w), F = padded latent frames.

        The generator is consumed image first, then pose (the official order).
        """
        vae_dtype = self.vae.dtype
        image = image.unsqueeze(2).to(vae_dtype)  # (B, 3, 1, H, W)
        if isinstance(generator, list):
            image_latents = [
                retrieve_latents(self.vae.encode(img.unsqueeze(0)), g) for img, g in zip(image, generator, strict=True)
            ]
        else:
            image_latents = [retrieve_latents(self.vae.encode(img.unsqueeze(0)), generator) for img in image]
        # At inference the image latent is not scaled (invert_scale_latents); see docs/reference.md.
        image_latents = torch.cat(image_latents).to(dtype).permute(0, 2, 1, 3, 4)
        if not self.vae.config.invert_scale_latents:
            image_latents = self.vae_scaling_factor_image * image_latents
        zeros = image_latents.new_zeros((image_latents.shape[0], layout.latent_frames - 1, *image_latents.shape[2:]))
        image_latents = torch.cat([image_latents, zeros], dim=1)

        pose_latents = self.encode_pose_latents(pose_video, layout, generator, dtype)

        # The official code crashes when the latent count is odd (it pads only the noise).
        # Even counts are untouched; odd counts get the image and pose latents padded at
        # the front exactly like the noise, and the padding is dropped after sampling.
        return pad_front(image_latents, layout.padding), pose_latents

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | torch.Tensor | list[PIL.Image.Image],
        pose_video: torch.Tensor | list,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        use_dynamic_cfg: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 226,
        window_frames: int | None = None,
        overlap_frames: int = longvideo.DEFAULT_OVERLAP_LATENTS,
        color_match: bool = True,
        reinit_noise: bool = False,
        window_batch_size: int = 1,
        callback_on_window_end: Callable[[Any, int, int, int], None] | None = None,
        pose_strength: float = 1.0,
        frame_sink: Callable[[np.ndarray], None] | None = None,
    ) -> CogVideoXPipelineOutput | tuple:
        """Animates `image` with the poses of `pose_video`, guided by `prompt`.

        `pose_video`: (T, 3, H, W) in [-1, 1], or a sequence of T RGB images (a list, or a
        lazy sequence with `len` and indexing that draws or decodes frames when read, see
        `PoseVideo`: only one window's frames are read at a time); frame 0 is the pose of
        the reference image itself. `height`/`width` default to the pose video's size,
        `num_frames` to its length (must be 4k+1). Returns frames as `output_type`:
        "pil" (lists of PIL images), "np" (B, T, H, W, 3) float32 in [0, 1], "pt"
        (B, T, 3, H, W) in [0, 1], "uint8" (B, T, H, W, 3) uint8, or "latent" (B, F, C, h, w),
        the unpadded latents before decoding. "uint8" is exactly `round(clip(x, 0, 1) * 255)`
        of the "np" frames, at a quarter of the host memory (the way to ask for a long clip):
        the plain path converts each video on the device before it leaves it, the windowed
        path keeps only the overlap waiting for the next window in float.

        `frame_sink` (with `output_type="uint8"`): finished frames are handed to
        `frame_sink(frames)`, (B, n, H, W, 3) uint8 runs in clip order, as soon as they are
        final (window by window for a long clip), and not kept: the output's `frames` is
        None. This is how a video writer receives a long clip while the host holds about
        one window plus its overlap; the frames are the bits the "uint8" output holds.

        Long videos (see `dynamictrl/longvideo.py`): with `window_frames` set (4k+1, 37 is the
        trained length) a clip longer than one window is sampled as overlapping windows, each
        `[reference] + window_frames - 1` driving frames, fused at every denoising step.
        `overlap_frames` counts *latent* frames (4 pixel frames each) shared by neighbouring
        windows; `color_match` matches each decoded window's LAB mean/std to the first
        window's before the cross-fade; `window_batch_size` windows share one transformer
        call (memory grows with it); `callback_on_window_end(pipe, step, window, num_windows)`
        is called after each window's transformer call. A clip that fits one window takes
        the plain path: same seed, bitwise the same video as without `window_frames`.

        `pose_strength` (our extension, not the paper's): scales the PadaLN pose injection in
        every block (`models.transformer.pose_injection`); 1.0 is the trained model bit for
        bit, 0 ignores the pose video, up to 2 follows it more tightly.

        `reinit_noise` (off by default): FreeInit-style initial noise, the official
        `--re_init_noise_latent` (low frequencies of the noised reference latent + high
        frequencies of fresh noise); see `longvideo.reinit_noise` for how it differs.
        """
        pose = PoseVideo(pose_video)
        height = height or pose.height
        width = width or pose.width
        num_frames = num_frames or pose.num_frames
        self.check_dynamictrl_inputs(prompt, negative_prompt, height, width, num_frames, pose.num_frames, output_type)
        check_setting(GenerateSettings, "pose_strength", pose_strength)
        if frame_sink is not None and output_type != "uint8":
            raise ValueError(f"frame_sink receives uint8 frames: use output_type='uint8', not {output_type!r}.")
        if window_frames is not None:
            check_window(window_frames, overlap_frames, "overlap_frames", self.vae_scale_factor_temporal)
            if window_batch_size < 1:
                raise ValueError(f"window_batch_size must be >= 1, got {window_batch_size}.")
        bad_keys = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad_keys:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}.")

        batch_size = 1 if isinstance(prompt, str) else len(prompt)
        device = self._execution_device
        dtype = self.transformer.dtype
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        do_cfg = guidance_scale > 1.0

        # 1. Text, once per call: CFG batches [negative, positive].
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_cfg,
            max_sequence_length=max_sequence_length,
            device=device,
            dtype=dtype,
        )
        text = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds

        # 2. Timesteps.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 3. The reference image; conditions and noise follow in `_sample`.
        image_tensor = self.video_processor.preprocess(image, height=height, width=width).to(device)
        if image_tensor.shape[0] == 1 and batch_size > 1:
            image_tensor = image_tensor.expand(batch_size, -1, -1, -1)
        if image_tensor.shape[0] != batch_size:
            raise ValueError(
                f"Got {image_tensor.shape[0]} images for {batch_size} prompts: give one, or one per prompt."
            )
        if (pose.height, pose.width) != (height, width):
            logger.warning(f"Resizing the pose video from {(pose.height, pose.width)} to {(height, width)}.")
        if pose.batch not in (1, batch_size):
            raise ValueError(f"Got {pose.batch} pose videos for {batch_size} prompts: give one, or one per prompt.")
        # One denoising loop for every clip: a clip that fits one window (or asks for no
        # windows) is its one-window case, with the plain clip's layout and decoding.
        return self._sample(
            image_tensor=image_tensor,
            pose=pose,  # read, resized and moved one window at a time
            text=text,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            timesteps=timesteps,
            height=height,
            width=width,
            num_frames=num_frames,
            window_frames=window_frames,
            overlap_frames=overlap_frames,
            color_match=color_match,
            reinit_noise=reinit_noise,
            window_batch_size=window_batch_size,
            guidance_scale=guidance_scale,
            use_dynamic_cfg=use_dynamic_cfg,
            generator=generator,
            latents=latents,
            output_type=output_type,
            return_dict=return_dict,
            attention_kwargs=attention_kwargs,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback_on_window_end=callback_on_window_end,
            pose_strength=pose_strength,
            frame_sink=frame_sink,
        )

    def _decoded_to_uint8(self, frames: torch.Tensor) -> np.ndarray:
        """Decoded videos (B, C, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8 on the host.

        One video at a time, denormalised exactly as `postprocess_video(output_type="np")`
        does (in the VAE's dtype), then converted on the device: only uint8 crosses to the
        host, into one preallocated array."""
        batch, _, num_frames, height, width = frames.shape
        video = np.empty((batch, num_frames, height, width, 3), dtype=np.uint8)
        for b in range(batch):
            unit = self.video_processor.postprocess(frames[b].permute(1, 0, 2, 3), output_type="pt")
            video[b] = frames_to_uint8_tensor(unit).permute(0, 2, 3, 1).cpu().numpy()
        return video

    def _step_callback(self, callback, step: int, timestep, tensors: dict, names) -> torch.Tensor:
        """diffusers' `callback_on_step_end` protocol: the callback sees the named tensors and
        may return replacement latents."""
        outputs = callback(self, step, timestep, {name: tensors[name] for name in names}) or {}
        return outputs.pop("latents", tensors["latents"])

    def _step_constants(self, height: int, width: int, layout: LatentLayout, latents: torch.Tensor, generator):
        """What every denoising step reuses: RoPE of the padded latent grid, the ofs value
        (2.0, CogVideoX-1.5 I2V) and the scheduler's extra arguments."""
        rotary_emb = (
            self._prepare_rotary_positional_embeddings(height, width, layout.padded_latent_frames, latents.device)
            if self.transformer.config.use_rotary_positional_embeddings
            else None
        )
        ofs = latents.new_full((1,), fill_value=OFS) if self.transformer.config.ofs_embed_dim else None
        if isinstance(self.scheduler, CogVideoXDPMScheduler):
            step_kwargs = {"generator": generator, "eta": 0.0}
        else:
            step_kwargs = self.prepare_extra_step_kwargs(generator, 0.0)
        return rotary_emb, ofs, step_kwargs

    def _scheduler_step(self, noise_pred, old_pred_original_sample, timesteps, i, latents, step_kwargs, dtype):
        """x_t -> x_{t-1}. The DPM solver also takes the previous step's x0 prediction and
        timestep; it draws from the generator in `step_kwargs` (the official order)."""
        t = timesteps[i]
        if isinstance(self.scheduler, CogVideoXDPMScheduler):
            latents, old_pred_original_sample = self.scheduler.step(
                noise_pred,
                old_pred_original_sample,
                t,
                timesteps[i - 1] if i > 0 else None,
                latents,
                **step_kwargs,
                return_dict=False,
            )
        else:
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        return latents.to(dtype), old_pred_original_sample

    # ------------------------------------------------------------------ long videos
    def encode_pose_latents(
        self,
        pose_video: torch.Tensor,
        layout: LatentLayout,
        generator: torch.Generator | list[torch.Generator] | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Pose latents (B, F, C, h, w) of one clip, scaled and front-padded exactly as in
        `encode_condition_latents` (one draw from the generator)."""
        pose = pose_video.permute(0, 2, 1, 3, 4).to(self.vae.dtype)  # (B, 3, T, H, W)
        pose_generator = generator[0] if isinstance(generator, list) else generator
        pose_latents = retrieve_latents(self.vae.encode(pose), pose_generator)
        pose_latents = self.vae.config.scaling_factor * pose_latents.permute(0, 2, 1, 3, 4).to(dtype)
        return pad_front(pose_latents, layout.padding)

    def _sample(
        self,
        *,
        image_tensor: torch.Tensor,
        pose: PoseVideo,
        text: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        timesteps: torch.Tensor,
        height: int,
        width: int,
        num_frames: int,
        window_frames: int | None,
        overlap_frames: int,
        color_match: bool,
        reinit_noise: bool,
        window_batch_size: int,
        guidance_scale: float,
        use_dynamic_cfg: bool,
        generator,
        latents: torch.Tensor | None,
        output_type: str,
        return_dict: bool,
        attention_kwargs: dict[str, Any] | None,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
        callback_on_window_end,
        pose_strength,
        frame_sink,
    ) -> CogVideoXPipelineOutput | tuple:
        """The denoising loop, for a clip of one window or of many (see `longvideo.py`).

        A clip that fits one window (or `window_frames=None`) is one window of its own
        length: its latent layout, conditions, noise and steps are exactly the plain
        clip's (fusing one window's prediction with weight 1 is the identity, bit for
        bit), and it is decoded whole. A longer clip is sampled in windows:

        Clip latents: [front padding] [slot 0] [N driving latents]; the padding and slot 0
        (the "head") are shared by every window. Each step runs every window (the head +
        its driving latents, the reference latent in slot 0, the pose latents of
        [reference pose] + its poses), fuses the model outputs on the clip (ramp weights on
        the driving latents, the mean on the head) and takes one scheduler step on the clip.
        Generator order: image latent, pose latents of window 0, 1, ..., initial noise of
        the clip, [re-initialised noise], then the scheduler's draws, one clip per step.
        """
        device = self._execution_device
        dtype = self.transformer.dtype
        batch_size = image_tensor.shape[0]
        do_cfg = guidance_scale > 1.0
        num_inference_steps = len(timesteps)
        k = self.vae_scale_factor_temporal
        if window_frames is None or num_frames <= window_frames:
            plan = longvideo.single_window_plan(num_frames, k)
        else:
            plan = longvideo.plan_windows(num_frames, window_frames, overlap_frames, k)
        window_frames = plan.window_frames
        layout = latent_layout(window_frames, k, self.transformer.config.patch_size_t)
        head = layout.padding + 1
        windows = plan.windows
        num_windows = len(windows)

        # 1. Conditions, one window at a time (the VAE sees one window's frames at most):
        # the reference latent is the same in every window's slot 0.
        def window_pose(window):
            return pose.window(plan.pixel_frames(window), height, width, batch_size, device)

        image_latents, first_pose = self.encode_condition_latents(
            image_tensor, window_pose(windows[0]), layout, generator, dtype
        )
        pose_latents = [first_pose] + [
            self.encode_pose_latents(window_pose(w), layout, generator, dtype) for w in windows[1:]
        ]

        # 2. Noise of the whole clip (small: latents only).
        latent_channels = self.transformer.config.in_channels // 2
        noise_shape = (
            batch_size,
            head + plan.driving_latents,
            latent_channels,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        if latents is None:
            latents = randn_tensor(noise_shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != noise_shape:
            raise ValueError(
                f"`latents` must have shape {noise_shape} for this clip and window, got {tuple(latents.shape)}."
            )
        latents = latents.to(device, dtype)
        if reinit_noise:
            clip_image = torch.cat([image_latents[:, :head], image_latents.new_zeros(noise_shape)[:, head:]], dim=1)
            latents = longvideo.reinit_noise(latents, clip_image, self.scheduler, generator)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma

        def window_slice(x: torch.Tensor, window) -> torch.Tensor:
            if num_windows == 1:
                return x  # the window is the clip
            return torch.cat([x[:, :head], x[:, head + window.start : head + window.stop]], dim=1)

        fusion = [torch.as_tensor(w, dtype=torch.float32, device=device) for w in longvideo.latent_fusion_weights(plan)]
        chunks = [windows[i : i + window_batch_size] for i in range(0, num_windows, window_batch_size)]

        def repeat(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
            return None if x is None else torch.cat([x] * n)

        def text_for(n: int) -> torch.Tensor:
            if do_cfg:
                return torch.cat([repeat(negative_prompt_embeds, n), repeat(prompt_embeds, n)])
            return repeat(prompt_embeds, n)

        texts = {len(chunk): (text if len(chunk) == 1 else text_for(len(chunk))) for chunk in chunks}
        rotary_emb, ofs, step_kwargs = self._step_constants(height, width, layout, latents, generator)
        # What every step gives the transformer besides the latents, per chunk of windows, once.
        cfg_copies = 2 if do_cfg else 1
        image_inputs = {len(chunk): repeat(image_latents, len(chunk) * cfg_copies) for chunk in chunks}
        pose_inputs = [repeat(torch.cat([pose_latents[w.index] for w in chunk]), cfg_copies) for chunk in chunks]
        del pose_latents

        # 3. Denoising loop: every window at every step, fused on the clip.
        old_pred_original_sample = None
        with self.progress_bar(total=num_inference_steps * num_windows) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                self._current_timestep = t
                if use_dynamic_cfg:
                    self._guidance_scale = 1 + guidance_scale * (
                        (1 - math.cos(math.pi * ((num_inference_steps - t.item()) / num_inference_steps) ** 5.0)) / 2
                    )
                scaled = self.scheduler.scale_model_input(latents, t)
                noise_pred = torch.zeros(latents.shape, dtype=torch.float32, device=device)
                for chunk, pose_input in zip(chunks, pose_inputs):
                    n = len(chunk)
                    window_latents = (
                        torch.cat([window_slice(scaled, w) for w in chunk]) if n > 1 else window_slice(scaled, chunk[0])
                    )
                    model_input = torch.cat([window_latents] * 2) if do_cfg else window_latents
                    model_input = torch.cat([model_input, image_inputs[n]], dim=2)
                    # One cache context per window (block caches compare a window with itself);
                    # one for the CFG batch of a one-window clip, as diffusers' pipelines do.
                    context = "cond_uncond" if num_windows == 1 else f"cond_uncond_window{chunk[0].index}"
                    with self.transformer.cache_context(context):
                        pred = self.transformer(
                            hidden_states=model_input,
                            encoder_hidden_states=texts[n],
                            timestep=t.expand(model_input.shape[0]),
                            pose_latents=pose_input,
                            ofs=ofs,
                            image_rotary_emb=rotary_emb,
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                            pose_strength=pose_strength,
                        )[0].float()
                    if do_cfg:
                        pred_uncond, pred_text = pred.chunk(2)
                        pred = pred_uncond + self.guidance_scale * (pred_text - pred_uncond)
                    for j, window in enumerate(chunk):
                        window_pred = pred[j * batch_size : (j + 1) * batch_size]
                        noise_pred[:, :head] += window_pred[:, :head] / num_windows
                        weight = fusion[window.index].view(1, -1, 1, 1, 1)
                        noise_pred[:, head + window.start : head + window.stop] += weight * window_pred[:, head:]
                        if callback_on_window_end is not None:
                            callback_on_window_end(self, i, window.index, num_windows)
                        progress_bar.update()
                    del pred, model_input

                latents, old_pred_original_sample = self._scheduler_step(
                    noise_pred, old_pred_original_sample, timesteps, i, latents, step_kwargs, dtype
                )
                if callback_on_step_end is not None:
                    tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                        "pred_original_sample": old_pred_original_sample,
                    }
                    latents = self._step_callback(
                        callback_on_step_end, i, t, tensors, callback_on_step_end_tensor_inputs
                    )
        self._current_timestep = None

        # 4. Decode: a one-window clip whole (drop the front padding, decode, keep the first
        # T frames); a longer one window by window ([slot 0] + its latents, the layout the
        # causal VAE expects), colour-matched to the first window, overlaps cross-faded.
        if output_type == "latent":
            video = latents[:, layout.padding :]
        elif num_windows == 1:
            frames = self.decode_latents(latents[:, layout.padding :].to(self.vae.dtype))[:, :, :num_frames]
            if output_type == "uint8":
                video = self._decoded_to_uint8(frames)
                if frame_sink is not None:
                    frame_sink(video)
                    video = None
            else:
                video = self.video_processor.postprocess_video(video=frames, output_type=output_type)
            del frames
        else:
            stitcher = longvideo.FrameStitcher(
                plan,
                batch_size,
                height,
                width,
                color_match=color_match,
                dtype=np.uint8 if output_type == "uint8" else np.float32,
                sink=(lambda start, frames: frame_sink(frames)) if frame_sink is not None else None,
            )
            for window in windows:
                window_latents = window_slice(latents, window)[:, layout.padding :]
                frames = self.decode_latents(window_latents.to(self.vae.dtype))[:, :, :window_frames]
                frames = (frames / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).float().cpu().numpy()
                stitcher.add(window, frames)
                del frames
            clip = stitcher.frames
            if frame_sink is not None:
                video = None
            elif output_type in ("np", "uint8"):
                video = clip
            elif output_type == "pt":
                video = torch.from_numpy(clip).permute(0, 1, 4, 2, 3)
            else:
                video = [self.video_processor.numpy_to_pil(frames) for frames in clip]
        self.maybe_free_model_hooks()

        if not return_dict:
            return (video,)
        return CogVideoXPipelineOutput(frames=video)
