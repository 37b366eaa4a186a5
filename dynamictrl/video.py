"""All video I/O of the project: read frames with their fps, pick frames at a target
fps from a start time, write H.264 mp4 (optionally with audio).

Uses the ffmpeg binary shipped inside `imageio-ffmpeg` (no system ffmpeg needed), so
mp4, mov, webm, mkv and gif all read the same way. Every file is probed first through
`dynamictrl.probe` (a regular local file, a container on the video allow-list, limits
from the stream data), and ffmpeg decodes it with the same allow-lists.
"""

import math
import os
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from . import probe as media
from .limits import LimitError, Limits, how_to_raise


class VideoError(media.MediaError):
    """A video could not be read or written; the message says why and what to do."""


class VideoLimitError(VideoError, LimitError):
    """A video is larger than a `Limits` field allows (found from its header, before decoding)."""


class VideoTooShortError(VideoError):
    def __init__(self, message: str, available_frames: int):
        super().__init__(message)
        self.available_frames = available_frames


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


def _decode_error(path: Path, error: Exception) -> VideoError:
    text = str(error)
    if "does not contain any stream" in text and "Video:" not in text:
        return VideoError(f"{path.name} has no video track (is it an audio file?): pick a video file.")
    if "received no packets" in text and "[dec:" not in text:
        # The header names a video track, but no frame of it reached the decoder (an empty
        # track, or the media data is missing); a decoder error instead means damaged data.
        return VideoError(
            f"{path.name} has a video track but no frames in it (empty, or the file was cut off after its "
            "header): pick another video or export it again."
        )
    detail = text.strip().splitlines()[-1] if text.strip() else type(error).__name__
    if detail.strip() == "Conversion failed!":  # ffmpeg's last word says nothing about the cause
        detail = "no frame could be decoded"
    return VideoError(
        f"Could not decode {path.name}: {detail}. The file may be corrupt or use an unsupported codec; "
        f"re-encode it, e.g. `ffmpeg -i {path.name} -c:v libx264 -pix_fmt yuv420p fixed.mp4`."
    )


def _decoder_params(threads: int | None) -> list[str] | None:
    """ffmpeg input options for `threads` decoder threads (None: ffmpeg's default, one per
    core). An input option, so it sets the decoder's threads only; H.264 and the other
    codecs decode bit-exactly whatever the thread count, so the frames are the same."""
    if threads is None:
        return None
    if int(threads) < 1:
        raise VideoError(f"The decoder thread count must be >= 1 (or None for ffmpeg's default), got {threads}.")
    return ["-threads", str(int(threads))]


# ---------------------------------------------------------------------------- probing

PROBE_TIMEOUT_S = media.PROBE_TIMEOUT_S


@dataclass(frozen=True)
class VideoInfo:
    """What a video's streams say, read without decoding a frame (`probe_video`)."""

    width: int  # coded size; a rotation flag may swap it when decoded
    height: int
    fps: float  # average frame rate; 0 when the stream has none
    duration_s: float  # 0 when the container says nothing
    codec: str
    has_audio: bool
    # The average rate differs from the stream's base rate: the frames are not evenly
    # spaced (phone recordings, joined clips), so reading resamples them to `fps`.
    variable_fps: bool
    frames: int = 0  # the container's frame count (its index), 0 when it has none
    # The probe behind these numbers: the absolute path and the demuxer ffmpeg is held to.
    source: media.MediaProbe | None = field(default=None, repr=False, compare=False)
    rate: Fraction | None = field(default=None, repr=False, compare=False)  # `fps` exactly

    @property
    def estimated_frames(self) -> int:
        """The container's frame count, or duration x fps (0 when neither is known)."""
        estimate = round(self.duration_s * self.fps) if self.duration_s > 0 and self.fps > 0 else 0
        return max(self.frames, estimate)


def _unreadable(name: str, detail: str) -> VideoError:
    return VideoError(
        f"Could not decode {name}: {detail}. The file may be corrupt or use an unsupported codec; "
        f"re-encode it, e.g. `ffmpeg -i {name} -c:v libx264 -pix_fmt yuv420p fixed.mp4`."
    )


def probe_video(path: str | Path) -> VideoInfo:
    """The video's size, frame rate, duration and frame count from its stream data
    (`dynamictrl.probe`: a regular local file in an allowed container; no frame decoded).

    Raises VideoError for a missing, refused or unreadable file and for one without a
    video track (an audio file, including one whose cover picture is a video stream).
    """
    probed = media.probe(path, media.VIDEO, VideoError, unreadable=_unreadable)
    name = Path(os.fspath(path)).name
    stream = probed.video
    if stream is None:
        raise VideoError(f"{name} has no video track (is it an audio file?): pick a video file.")
    rate = stream.average_rate
    fps = float(rate) if rate else 0.0
    base = float(stream.base_rate) if stream.base_rate else 0.0
    return VideoInfo(
        width=stream.width,
        height=stream.height,
        fps=fps,
        duration_s=stream.duration_s or probed.duration_s,
        codec=stream.codec,
        has_audio=probed.has_audio,
        variable_fps=fps > 0 and base > 0 and abs(fps - base) > 0.005 * fps,
        frames=stream.frames,
        source=probed,
        rate=rate,
    )


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def check_video_limits(info: VideoInfo, limits: Limits, name: str) -> None:
    """VideoLimitError when the header shows the video is larger than `limits` allows."""
    width, height = info.width, info.height
    if max(width, height) > limits.max_video_side:
        raise VideoLimitError(
            f"{name} is {width}x{height}; videos may be at most {limits.max_video_side} px on the longer side. "
            f"Downscale it first, e.g. `ffmpeg -i {name} -vf scale=-2:1080 smaller.mp4`; {how_to_raise('max_video_side')}."
        )
    if width * height > limits.max_video_pixels:
        raise VideoLimitError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels a frame, more than the "
            f"{limits.max_video_pixels / 1e6:.1f} allowed. Downscale it first, e.g. `ffmpeg -i {name} -vf scale=-2:1080 "
            f"smaller.mp4`; {how_to_raise('max_video_pixels')}."
        )
    if info.duration_s > limits.max_video_seconds:
        raise VideoLimitError(
            f"{name} lasts {_minutes(info.duration_s)}, longer than the {_minutes(limits.max_video_seconds)} allowed. "
            f"Trim it first, e.g. `ffmpeg -i {name} -ss 0 -t 60 -c copy part.mp4`; {how_to_raise('max_video_seconds')}."
        )
    if info.estimated_frames > limits.max_video_frames:
        raise VideoLimitError(
            f"{name} holds about {info.estimated_frames:,} frames ({info.duration_s:.1f} s at {info.fps:g} fps), more "
            f"than the {limits.max_video_frames:,} allowed. Lower its frame rate or trim it, e.g. `ffmpeg -i {name} "
            f"-r 30 fewer.mp4`; {how_to_raise('max_video_frames')}."
        )


def _probe(path: Path, limits: Limits | None) -> VideoInfo:
    info = probe_video(path)
    if limits is not None:
        check_video_limits(info, limits, path.name)
    return info


def iter_frames(path: Path, threads: int | None = None, info: VideoInfo | None = None):
    """Yields (meta, frame iterator); every decoder failure becomes a VideoError.

    The file is probed first (`probe_video`) unless its `info` is given; ffmpeg then
    decodes the absolute path with the probe's allow-lists. `meta` holds the decoded
    frame size ("size": (width, height)) and the stream data's "fps", "duration" and
    "frames", never numbers from ffmpeg's text log.

    A variable-frame-rate video is resampled to its average rate: ffmpeg would otherwise
    emit its frames at a base rate of its own choosing (dropping most of a 60 fps stretch
    of a 10/60 fps clip) while reporting the average, so timings computed from the fps
    would be wrong.
    """
    path = Path(path)
    if info is None or info.source is None:
        info = probe_video(path)
    input_params = info.source.ffmpeg_input_options() + (_decoder_params(threads) or [])
    output_params = ["-vf", f"fps={info.rate}"] if info.variable_fps and info.rate else None
    try:
        reader = imageio_ffmpeg.read_frames(str(info.source.path), input_params=input_params,
                                            output_params=output_params)
        decoded = reader.__next__()
        width, height = decoded["size"]
    except (OSError, RuntimeError, StopIteration, KeyError) as error:
        raise _decode_error(path, error) from error
    if info.width and info.height and sorted((width, height)) != sorted((info.width, info.height)):
        reader.close()
        raise VideoError(
            f"{path.name}: its frames decode at {width}x{height} but its video stream says {info.width}x{info.height}; "
            f"the file is inconsistent. Re-encode it, e.g. `ffmpeg -i {path.name} -c:v libx264 -pix_fmt yuv420p fixed.mp4`."
        )
    meta = {"size": (width, height), "fps": info.fps, "duration": info.duration_s, "frames": info.frames}

    def frames():
        try:
            for buffer in reader:
                yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as error:
            raise _decode_error(path, error) from error
        finally:
            reader.close()

    return meta, frames()


def count_frames(info: VideoInfo, stop_after: int | None = None) -> int:
    """The video's frames counted from its packets (nothing decoded), stopping once
    `stop_after` is passed; a VideoError if the file cannot be read to its end."""
    import av

    try:
        return media.count_video_packets(info.source, stop_after)
    except (av.error.FFmpegError, OSError) as error:
        raise VideoError(f"Could not count the frames of {info.source.path.name} ({error}): re-encode it, e.g. "
                         f"`ffmpeg -i {info.source.path.name} -c:v libx264 -pix_fmt yuv420p fixed.mp4`.") from error


# First allocation of a frame buffer: at most this many bytes, however many frames the
# header promises (a wrong duration must not reserve absurd amounts); it grows past that.
_FIRST_BUFFER_BYTES = 4 * 1024**3


class _FrameBuffer:
    """(T, H, W, 3) uint8 frames copied one at a time into a single array.

    The decoder hands over each frame as its own bytes object. Keeping those and stacking
    them at the end holds every frame twice at the peak and touches twice the memory;
    copying each into one array as it arrives lets the next frame reuse the bytes' memory.
    The array is sized from the header's duration x fps with some slack (untouched slack
    costs no memory), grows if a video has more frames than announced, and is trimmed to
    the frames written at the end.
    """

    def __init__(self, meta: dict, limit: int | None = None):
        self.width, self.height = meta["size"]
        fps, duration = float(meta.get("fps") or 0.0), float(meta.get("duration") or 0.0)
        expected = math.ceil(duration * fps * 1.05) + 16 if fps > 0 and duration > 0 else 64
        frame_bytes = max(1, self.width * self.height * 3)
        capacity = min(expected, max(16, _FIRST_BUFFER_BYTES // frame_bytes))
        self.limit = limit
        self.frames = np.empty((self._capped(capacity), self.height, self.width, 3), dtype=np.uint8)

    def _capped(self, capacity: int) -> int:
        return max(1, capacity if self.limit is None else min(capacity, self.limit))

    def put(self, position: int, frame: np.ndarray) -> None:
        if position >= len(self.frames):
            grown = np.empty((self._capped(max(position + 1, 2 * len(self.frames))), *self.frames.shape[1:]), np.uint8)
            grown[: len(self.frames)] = self.frames
            self.frames = grown
        self.frames[position] = frame

    def result(self, count: int) -> np.ndarray:
        """The first `count` frames as an array of their own."""
        if count < len(self.frames):
            # Shrinks the allocation in place (realloc); nothing else refers to this array.
            self.frames.resize((count, *self.frames.shape[1:]), refcheck=False)
        return self.frames


def read_video(path: str | Path, max_frames: int | None = None, threads: int | None = None,
               limits: Limits | None = None) -> Video:
    """Reads a video (mp4, mov, webm, mkv, gif, ...) as RGB uint8 frames.

    `threads`: decoder threads (None: ffmpeg's default); the frames do not depend on it.
    `limits`: refuse a video larger than these (`VideoLimitError`) from its header, before
    decoding; a whole-file read also stops at `limits.max_video_frames` frames, for files
    whose header says nothing of their length.
    """
    path = Path(path)
    info = _probe(path, limits)
    meta, frames_iter = iter_frames(path, threads, info)
    # max_frames < 1 still returns the first frame, as it always has.
    buffer = _FrameBuffer(meta, None if max_frames is None else max(1, max_frames))
    cap = limits.max_video_frames if limits is not None and max_frames is None else None
    count = 0
    for frame in frames_iter:
        if cap is not None and count >= cap:
            frames_iter.close()
            raise VideoLimitError(
                f"{path.name} has more than {cap:,} frames (its header did not say how many). Trim it or lower its "
                f"frame rate; {how_to_raise('max_video_frames')}."
            )
        buffer.put(count, frame)
        count += 1
        if max_frames is not None and count >= max_frames:
            frames_iter.close()
            break
    if count == 0:
        raise VideoError(f"{path.name} contains no frames: pick another video or re-export it.")
    fps = float(meta.get("fps") or 0.0)
    return Video(frames=buffer.result(count), fps=fps if fps > 0 else 16.0)


def sample_indices(source_fps: float, target_fps: float | None, start_s: float, count: int) -> list[int]:
    """Source frame indices for `count` frames at `target_fps` from `start_s`.

    `target_fps=None` keeps every source frame (the official behaviour). Each output
    frame takes the source frame shown at its time, so motion keeps its real speed.
    """
    first = int(math.floor(start_s * source_fps + 1e-6))
    if not target_fps or target_fps <= 0:
        return list(range(first, first + count))
    step = source_fps / target_fps
    return [first + int(math.floor(k * step + 1e-6)) for k in range(count)]


def pick_frames(
    path: str | Path,
    count: int,
    fps: float | None = None,
    start_s: float = 0.0,
    loop: bool = False,
    threads: int | None = None,
    limits: Limits | None = None,
) -> Video:
    """`count` frames of a video at `fps` (None: native) from `start_s`, streamed so
    only the chosen frames are kept in memory.

    A video too short for `count` frames is an error that offers the fixes, unless
    `loop=True`, which wraps around to the start. `threads`: decoder threads (None:
    ffmpeg's default); the frames do not depend on it. `limits`: as for `read_video`, and
    `count` may be at most `limits.max_frames`.
    """
    path = Path(path)
    if count < 1:
        raise VideoError(f"Asked for {count} frames from {path.name}: ask for at least one.")
    if not math.isfinite(start_s) or start_s < 0:
        raise VideoError(f"The start time must be >= 0 s, got {start_s}.")
    if fps is not None and not math.isfinite(fps):
        raise VideoError(f"The fps must be a finite number (or None for every frame), got {fps}.")
    if limits is not None and count > limits.max_frames:
        raise VideoLimitError(
            f"Asked for {count:,} frames from {path.name}; at most {limits.max_frames:,} are allowed per job; "
            f"{how_to_raise('max_frames')}."
        )
    info = _probe(path, limits)
    meta, frames_iter = iter_frames(path, threads, info)
    source_fps = float(meta.get("fps") or 0.0) or 16.0
    wanted = sample_indices(source_fps, fps, start_s, count)
    positions = {}
    for position, index in enumerate(wanted):
        positions.setdefault(index, []).append(position)
    picked = _FrameBuffer(meta, count)
    filled = [False] * count
    total = 0
    for index, frame in enumerate(frames_iter):
        total = index + 1
        for position in positions.get(index, ()):
            picked.put(position, frame)
            filled[position] = True
        if index >= wanted[-1]:
            frames_iter.close()
            break
    if total == 0:
        raise VideoError(f"{path.name} contains no frames: pick another video or re-export it.")
    missing = [k for k in range(count) if not filled[k]]
    if missing:
        if not loop:
            available = missing[0]
            duration = total / source_fps
            raise VideoTooShortError(
                f"{path.name} is {duration:.2f} s long ({total} frames at {source_fps:g} fps); from {start_s:g} s at "
                f"{fps or source_fps:g} fps it gives {available} frames but {count} are needed. Lower the frame count, "
                "lower the fps, start earlier, or loop the video.",
                available_frames=available,
            )
        # Second pass: wrap the missing source indices around the video's real length.
        wrapped = {k: wanted[k] % total for k in missing}
        video = read_video(path, max_frames=max(wrapped.values()) + 1, threads=threads, limits=limits)
        for k, index in wrapped.items():
            picked.put(k, video.frames[index])
    return Video(frames=picked.result(count), fps=float(fps) if fps else source_fps)


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
    """Writes H.264 mp4 (yuv420p, even sizes), optionally muxing an audio file (AAC).

    `frames` is an array/list, or any iterable of (H, W, 3) frames, which is streamed to
    the encoder one frame at a time (long outputs never sit in memory whole). The audio
    file is probed like every input (`dynamictrl.probe`) before a frame is encoded.
    """
    path = Path(path)
    audio = media.probe(audio_path, media.AUDIO, VideoError) if audio_path else None
    if audio is not None and not audio.has_audio:
        raise VideoError(f"{Path(audio_path).name} has no audio track to add to {path.name}.")
    if isinstance(frames, (list, np.ndarray)) or hasattr(frames, "shape"):
        stream = iter(_even(to_uint8_frames(frames)))
    else:
        stream = (_even(to_uint8_frames([frame]))[0] for frame in frames)
    first = next(stream, None)
    if first is None:
        raise VideoError(f"No frames to write to {path.name}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = first.shape[:2]
    # Encoded under a temporary name: a failure or cancellation mid-stream leaves no
    # truncated video where a finished one is expected.
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = imageio_ffmpeg.write_frames(
        str(partial),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=quality,
        macro_block_size=1,
    )
    writer.send(None)
    # imageio-ffmpeg never looks at ffmpeg's exit status: an ffmpeg that was killed or could
    # not write (a full disk) would leave a truncated file to be renamed into place. The
    # process is the generator's local `p` (imageio-ffmpeg 0.8, pinned; tests/test_faults.py
    # fails if that changes).
    process = writer.gi_frame.f_locals["p"]
    try:
        writer.send(np.ascontiguousarray(first))
        for frame in stream:
            if frame.shape[:2] != (height, width):
                raise VideoError(f"Frame size changed from {width}x{height} to {frame.shape[1]}x{frame.shape[0]}.")
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        status = process.wait()
        if status != 0:
            raise VideoError(f"ffmpeg stopped with exit status {status} while writing {path.name} (killed, or the "
                             "disk is full?); nothing was written.")
        if audio is not None:
            _add_audio(partial, audio, path.name)
        os.replace(partial, path)  # inside: if `path` cannot be replaced, no partial file stays
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return path


def _add_audio(video: Path, audio: media.MediaProbe, name: str) -> None:
    """Muxes the probed audio file's first audio track (AAC) into `video`, replaced in
    place; the frames are copied, not encoded again. Our own ffmpeg command, so the audio
    input gets the probe's allow-lists (imageio-ffmpeg's writer has no options for it)."""
    muxed = video.with_name(video.name.replace(".partial", ".partial-audio"))
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
        *media.ffmpeg_input_options("mov"), "-i", str(video),
        *audio.ffmpeg_input_options(), "-i", str(audio.path),
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest", str(muxed),
    ]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit status {result.returncode}"
            raise VideoError(f"Could not add the audio of {audio.path.name} to {name}: {detail}. Re-export the audio "
                             "(e.g. as wav) and try again; nothing was written.")
        os.replace(muxed, video)
    finally:
        muxed.unlink(missing_ok=True)


def longest_pose_clip(path: str | Path, fps: float | None = None, start_s: float = 0.0,
                      limits: Limits | None = None) -> int:
    """The largest 4k+1 pose-frame count a driving video gives from `start_s` at `fps`
    (None: every frame), frame 0 being the reference pose: the "whole clip" length.
    `limits`: refuse a video larger than these before counting its frames; the count is
    also capped at `limits.max_frames`."""
    path = Path(path)
    info = _probe(path, limits)
    total = count_frames(info, stop_after=limits.max_video_frames if limits is not None else None)
    if limits is not None and total > limits.max_video_frames:
        raise VideoLimitError(
            f"{path.name} has more than {limits.max_video_frames:,} frames (its header did not say how many). Trim it or "
            f"lower its frame rate; {how_to_raise('max_video_frames')}."
        )
    meta, frames_iter = iter_frames(path, info=info)
    frames_iter.close()
    source_fps = float(meta.get("fps") or 0.0) or 16.0
    indices = sample_indices(source_fps, fps, start_s, 1)
    if indices[0] >= total:
        raise VideoError(f"{path.name} is {total / source_fps:.2f} s long: the start time {start_s:g} s is past its end.")
    step = source_fps / fps if fps else 1.0
    driving = int((total - 1 - indices[0]) / step + 1e-6) + 1  # driving frames available
    if limits is not None:
        driving = min(driving, limits.max_frames - 1)
    return driving // 4 * 4 + 1


def check_video_memory(path: str | Path, limit_gb: float, fix: str = "trim it or lower its resolution") -> int:
    """Raises VideoError if all decoded frames of `path` would take more than `limit_gb`;
    returns the frame count. Counts packets (no decoding)."""
    path = Path(path)
    info = probe_video(path)
    meta, frames_iter = iter_frames(path, info=info)
    frames_iter.close()
    total = count_frames(info)
    width, height = meta["size"]
    needed_gb = total * width * height * 3 / 1024**3
    if needed_gb > limit_gb:
        raise VideoError(
            f"{path.name} has {total} frames of {width}x{height}: {needed_gb:.1f} GB decoded, more than the "
            f"{limit_gb:g} GB allowed; {fix}."
        )
    return total
