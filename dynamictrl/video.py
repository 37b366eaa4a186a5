"""All video I/O of the project: read frames with their fps, write H.264 mp4.

Uses the ffmpeg binary shipped inside `imageio-ffmpeg` (no system ffmpeg needed).
"""

from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np


class VideoError(ValueError):
    """A video could not be read or written; the message says why and what to do."""


@dataclass
class Video:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def read_video(path: str | Path, max_frames: int | None = None) -> Video:
    """Reads a video (mp4, mov, webm, mkv, gif, ...) as RGB uint8 frames."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"Video file not found: {path}")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = reader.__next__()
        width, height = meta["size"]
        fps = float(meta.get("fps") or 0.0)
        frames = []
        for buffer in reader:
            frames.append(np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3))
            if max_frames is not None and len(frames) >= max_frames:
                reader.close()
                break
    except (OSError, RuntimeError, StopIteration, KeyError) as error:
        raise VideoError(
            f"Could not decode {path.name}: {str(error).strip().splitlines()[-1] if str(error).strip() else error}. "
            "The file may be corrupt or use an unsupported codec; re-encode it, e.g. "
            f"`ffmpeg -i {path.name} -c:v libx264 -pix_fmt yuv420p fixed.mp4`."
        ) from error
    if not frames:
        raise VideoError(f"{path.name} contains no frames: pick another video or re-export it.")
    return Video(frames=np.stack(frames), fps=fps if fps > 0 else 16.0)


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column where a size is odd."""
    height, width = frames.shape[1:3]
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    return np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames


def to_uint8_frames(frames) -> np.ndarray:
    """PIL list, float arrays in [0, 1] or uint8 arrays -> (T, H, W, 3) uint8."""
    if isinstance(frames, list):
        frames = np.stack([np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame) for frame in frames])
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"Frames must be (T, H, W, 3) RGB, got shape {frames.shape}.")
    return frames


def write_video(path: str | Path, frames, fps: float = 16.0, audio_path: str | Path | None = None, quality: int = 8):
    """Writes H.264 mp4 (yuv420p, even sizes), optionally muxing an audio file (AAC)."""
    path = Path(path)
    frames = _even(to_uint8_frames(frames))
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=quality,
        macro_block_size=1,
        audio_path=str(audio_path) if audio_path else None,
        audio_codec="aac" if audio_path else None,
        output_params=["-shortest"] if audio_path else None,
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path
