"""MuseTalk 1.5 lip-sync: one UNet pass per frame that repaints the lower half of the face.

    audio -> whisper features -> one [50, 384] window per video frame (+ sinusoidal PE)
    frame -> face box (DWPose landmarks) -> 256x256 crop -> VAE(masked crop) ++ VAE(crop)
          -> UNet(t=0, audio window) -> VAE decode -> pasted back with a face-parsing mask

Everything that depends only on the video (boxes, latents, blend masks) is an `Avatar`,
computed once by `prepare_avatar` and cached (`cache.py`), so each new audio clip costs
only whisper, the UNet and the VAE decoder.

The video's frames are streamed: an avatar's `frames` may be a `video.VideoFrames`, which
decodes frames when they are read and keeps only a bounded number of them, so
preparation reads them once in order and blending reads them in playback order
(forward, and backward for ping-pong); no stage holds the whole video. MuseTalk is not a diffusion sampler: no
scheduler, noise or guidance.
"""

import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..pose.types import FramePose
from .audio import frame_windows, num_video_frames, positional_encoding
from .blending import blend_mask, face_large, paste_face
from .face import FaceBox, crop_face, face_boxes, unet_inputs
from .models import MuseTalkModels
from .settings import LipSyncSettings

LATENT_SCALE = 0.18215  # MuseTalk hard-codes SD-1.x's factor (sd-vae-ft-mse's config has none)

ProgressCallback = Callable[[float, str], None]


class PackedMasks(Sequence):
    """Blend masks (uint8, crop-box sized, or None) kept zlib-compressed: a feathered mask
    is mostly 0 and 255 and packs to a few KiB, so a long video's masks stay small in
    memory. Reading one unpacks it, bit for bit."""

    def __init__(self, masks: Iterable[np.ndarray | None] = ()):
        self._packed: list[tuple[bytes, tuple[int, ...]] | None] = []
        for mask in masks:
            self.append(mask)

    def append(self, mask: np.ndarray | None) -> None:
        if mask is None:
            self._packed.append(None)
            return
        mask = np.ascontiguousarray(mask, dtype=np.uint8)
        self._packed.append((zlib.compress(mask.tobytes(), 1), mask.shape))

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        packed = self._packed[index]
        if packed is None:
            return None
        data, shape = packed
        return np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(shape)


class NoFaceError(ValueError):
    """No frame of the video shows a face that lip-sync could repaint."""


@dataclass
class Avatar:
    """Everything lip-sync needs from the video, independent of the audio."""

    # (N, H, W, 3) uint8 RGB source frames: an array, or a sequence with `len` and
    # indexing that decodes on demand (`video.VideoFrames`)
    frames: "np.ndarray | Sequence[np.ndarray]"
    fps: float
    boxes: list[FaceBox | None]  # None: no face in that frame, which is left as it is
    latents: torch.Tensor  # (F, 8, 32, 32) on the CPU: [masked, reference] of each face frame
    latent_rows: list[int | None]  # frame -> row of `latents`
    masks: "PackedMasks | list[np.ndarray | None]"  # feathered blend mask per frame (crop-box sized, uint8)
    crop_boxes: list[tuple[int, int, int, int] | None]

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def frames_without_face(self) -> list[int]:
        return [i for i, box in enumerate(self.boxes) if box is None]


@dataclass
class LipSyncReport:
    output_frames: int
    video_frames: int
    fps: float
    audio_seconds: float
    frames_without_face: list[int] = field(default_factory=list)
    avatar_cached: bool = False

    @property
    def looped(self) -> bool:
        return self.output_frames > self.video_frames

    @property
    def trimmed(self) -> bool:
        return self.output_frames < self.video_frames

    def summary(self) -> str:
        video_s = self.video_frames / self.fps
        lines = [f"{self.output_frames} frames at {self.fps:g} fps for {self.audio_seconds:.2f} s of audio."]
        if self.looped:
            lines.append(
                f"The audio is longer than the video ({video_s:.2f} s): the video plays forward and "
                "backward until the audio ends."
            )
        elif self.trimmed:
            lines.append(f"The audio is shorter than the video ({video_s:.2f} s): the video was cut to the audio.")
        if self.frames_without_face:
            lines.append(
                f"No face in {len(self.frames_without_face)} frame(s) ({describe_frames(self.frames_without_face)}); "
                "they are kept unchanged."
            )
        return " ".join(lines)


def describe_frames(indices: list[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def pingpong_index(i: int, num_frames: int) -> int:
    """Source frame of output frame `i` when the video plays forward then backward
    (MuseTalk's cycle: the end frames appear twice at each turn)."""
    position = i % (2 * num_frames)
    return position if position < num_frames else 2 * num_frames - 1 - position


def _report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LipSyncPipeline:
    def __init__(self, models: MuseTalkModels):
        self.models = models

    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def dtype(self) -> torch.dtype:
        return self.models.dtype

    # ------------------------------------------------------------------ video side
    @torch.inference_mode()
    def encode_faces(self, crops: np.ndarray) -> torch.Tensor:
        """(N, 256, 256, 3) uint8 crops -> (N, 8, 32, 32) CPU latents [masked, reference].

        MuseTalk samples the latent distribution; we take its mean (as its training
        does), so a cached avatar gives the same result every run.
        """
        masked, reference = unet_inputs(crops)
        pixels = torch.from_numpy(np.concatenate([masked, reference])).to(self.device, self.dtype)
        latents = self.models.vae.encode(pixels).latent_dist.mean * LATENT_SCALE
        count = len(crops)
        return torch.cat([latents[:count], latents[count:]], dim=1).float().cpu()

    def prepare_avatar(
        self,
        frames,
        fps: float,
        poses: list[FramePose],
        settings: LipSyncSettings,
        progress: ProgressCallback | None = None,
    ) -> Avatar:
        """Boxes, latents and blend masks of every frame (`poses` from our DWPose detector).

        `frames`: an (N, H, W, 3) array or a sequence with `len` and indexing
        (`video.VideoFrames`); the frames with a face are read once each, in order, one
        batch at a time."""
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError("The video has no frames to lip-sync.")
        if len(frames) == 0:
            raise ValueError("The video has no frames to lip-sync.")
        if len(poses) != len(frames):
            raise ValueError(f"Got {len(poses)} pose records for {len(frames)} frames.")
        height, width = np.asarray(frames[0]).shape[:2]
        boxes = face_boxes(poses, height, width, settings.bbox_shift, settings.extra_margin)
        faced = [i for i, box in enumerate(boxes) if box is not None]
        if not faced:
            raise NoFaceError(
                f"No face found in any of the {len(frames)} frames (frames 0-{len(frames) - 1}). Lip-sync needs the "
                "character's face visible and turned towards the camera; check the video, or the pose preview of "
                "the Motion step for missing face points."
            )
        latents, masks, crop_boxes = [], PackedMasks(), [None] * len(frames)
        for done, batch in enumerate(_batches(faced, settings.batch_size)):
            images = [np.asarray(frames[i]) for i in batch]  # each frame read once
            latents.append(self.encode_faces(np.stack([crop_face(image, boxes[i]) for image, i in zip(images, batch)])))
            large = [face_large(image, boxes[i].as_tuple()) for image, i in zip(images, batch)]
            del images
            labels = self.models.parser.parse([image for image, _ in large], batch_size=settings.batch_size)
            for i, (_, crop_box), label in zip(batch, large, labels):
                while len(masks) < i:  # frames without a face before this one
                    masks.append(None)
                masks.append(
                    blend_mask(
                        label,
                        boxes[i].as_tuple(),
                        crop_box,
                        settings.parsing_mode,
                        settings.left_cheek_width,
                        settings.right_cheek_width,
                    )
                )
                crop_boxes[i] = crop_box
            _report(
                progress,
                min(1.0, (done + 1) * settings.batch_size / len(faced)),
                f"Lip-sync: preparing faces {min(len(faced), (done + 1) * settings.batch_size)}/{len(faced)}",
            )
        rows = {frame: row for row, frame in enumerate(faced)}
        while len(masks) < len(frames):
            masks.append(None)
        return Avatar(
            frames, float(fps), boxes, torch.cat(latents), [rows.get(i) for i in range(len(frames))], masks, crop_boxes
        )

    # ------------------------------------------------------------------ audio side
    @torch.inference_mode()
    def audio_prompts(self, audio: np.ndarray, fps: float) -> torch.Tensor:
        """(T, 50, 384) UNet conditions for the T frames the audio lasts, PE included, on the CPU."""
        num_frames = num_video_frames(len(audio), fps)
        if num_frames == 0:
            raise ValueError(
                f"The audio lasts {len(audio) / 16000:.3f} s, shorter than one video frame at {fps:g} fps."
            )
        features = self.models.audio.encode(audio)
        windows = frame_windows(features, num_frames, fps)
        return windows.to(self.dtype) + positional_encoding(windows.shape[1], windows.shape[2], self.dtype)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate_faces(self, latents: torch.Tensor, prompts: torch.Tensor) -> np.ndarray:
        """One UNet pass at t=0 and a VAE decode: (B, 8, 32, 32), (B, 50, 384) -> (B, 256, 256, 3) uint8."""
        latents = latents.to(self.device, self.dtype)
        prompts = prompts.to(self.device, self.dtype)
        timestep = torch.tensor([0], device=self.device)
        predicted = self.models.unet(latents, timestep, encoder_hidden_states=prompts).sample
        images = self.models.vae.decode(predicted / LATENT_SCALE).sample
        images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()
        # Rounded on the device: a quarter of the bytes cross to the host.
        return (images * 255).round().to(torch.uint8).cpu().numpy()

    def __call__(
        self, avatar: Avatar, audio: np.ndarray, settings: LipSyncSettings, progress: ProgressCallback | None = None
    ) -> tuple[Iterator[np.ndarray], LipSyncReport]:
        """The lip-synced frames (a generator, so long clips never sit in memory) and a report.

        The output lasts as long as the audio: a shorter video plays forward and backward
        (ping-pong) until the audio ends, a longer one is cut.
        """
        prompts = self.audio_prompts(audio, avatar.fps)
        total = len(prompts)
        sources = [pingpong_index(i, avatar.num_frames) for i in range(total)]
        report = LipSyncReport(
            output_frames=total,
            video_frames=avatar.num_frames,
            fps=avatar.fps,
            audio_seconds=len(audio) / 16000,
            frames_without_face=[i for i in avatar.frames_without_face if i < total or total > avatar.num_frames],
        )

        def frames() -> Iterator[np.ndarray]:
            for batch in _batches(list(range(total)), settings.batch_size):
                faced = [i for i in batch if avatar.latent_rows[sources[i]] is not None]
                generated = {}
                if faced:
                    rows = torch.tensor([avatar.latent_rows[sources[i]] for i in faced])
                    faces = self.generate_faces(avatar.latents[rows], prompts[faced])
                    generated = dict(zip(faced, faces))
                for i in batch:
                    source = sources[i]
                    frame = avatar.frames[source]
                    if i in generated:
                        frame = paste_face(
                            frame,
                            generated[i],
                            avatar.boxes[source].as_tuple(),
                            avatar.masks[source],
                            avatar.crop_boxes[source],
                        )
                    yield frame
                _report(progress, (batch[-1] + 1) / total, f"Lip-sync: frame {batch[-1] + 1}/{total}")

        return frames(), report
