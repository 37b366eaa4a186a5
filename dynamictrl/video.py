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
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from . import probe as media
from .limits import LimitError, Limits, how_to_raise

# imageio-ffmpeg starts its reader and writer with `preexec_fn=os.setpgrp` (so Ctrl+C does
# not reach ffmpeg), which makes Python fork() instead of vfork(): the kernel copies the
# page tables of this whole process (gigabytes with a model loaded) for every ffmpeg, and
# every page the process writes afterwards is copied once more (measured on the tiny
# models: 17 % of the suite's time in three test files). With this variable set it does not
# ask for that; a Ctrl+C that reaches ffmpeg too changes nothing here, since the writer
# removes its partial file on any exception and a reader's consumer is interrupted anyway.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


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
        reader = imageio_ffmpeg.read_frames(
            str(info.source.path), input_params=input_params, output_params=output_params
        )
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
        raise VideoError(
            f"Could not count the frames of {info.source.path.name} ({error}): re-encode it, e.g. "
            f"`ffmpeg -i {info.source.path.name} -c:v libx264 -pix_fmt yuv420p fixed.mp4`."
        ) from error


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


def read_video(
    path: str | Path, max_frames: int | None = None, threads: int | None = None, limits: Limits | None = None
) -> Video:
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


class VideoFrames:
    """A video file's frames, decoded when read: `len`, `frames[i]`, `frames[indices]`
    (stacked), iteration. Nothing but the last `keep` decoded frames (and frame 0, which
    every window of a pose video starts with) is held, so memory is bounded whatever
    the video's length.

    Reading forward continues the running decoder; asking for a frame older than the
    kept ones restarts decoding from the start (exact: the same frames every pass).
    Windows that advance with a small overlap, and a video played backwards `keep`
    frames at a time, therefore cost a few decoding passes and no memory beyond `keep`.
    `max_frames` reads only the first frames (e.g. the clip's length of a pose video).
    The frame count is found by decoding once (one frame at a time) when first asked.
    """

    def __init__(
        self,
        path: str | Path,
        keep: int = 64,
        max_frames: int | None = None,
        threads: int | None = None,
        limits: Limits | None = None,
    ):
        self.path, self.keep, self.max_frames, self.threads, self.limits = (
            Path(path),
            max(1, keep),
            max_frames,
            threads,
            limits,
        )
        self.info = _probe(self.path, limits)
        meta, opened = iter_frames(self.path, threads, self.info)
        opened.close()
        width, height = meta["size"]
        self.size = (height, width)
        fps = float(meta.get("fps") or 0.0)
        self.fps = fps if fps > 0 else 16.0
        self._count: int | None = None
        self._decoder = None
        self._position = 0  # index of the frame the running decoder yields next
        # The last `keep` frames decoded (oldest first), and frame 0 beside them.
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self.passes = 0  # decoding passes started (for tests and benchmarks)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.size, 3)

    def _stop(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def close(self) -> None:
        self._stop()
        self._kept.clear()

    def _restart(self) -> None:
        self._stop()
        self._decoder = iter_frames(self.path, self.threads, self.info)[1]
        self._position = 0
        self.passes += 1

    def _cap(self) -> int | None:
        if self.max_frames is not None:
            return self.max_frames
        return self.limits.max_video_frames if self.limits is not None else None

    def _next(self) -> np.ndarray | None:
        """The running decoder's next frame (kept), or None at the end of the video."""
        cap = self._cap()
        frame = None if self._decoder is None else next(self._decoder, None)
        if frame is not None and cap is not None and self._position >= cap:
            if self.max_frames is None:
                self._stop()
                raise VideoLimitError(
                    f"{self.path.name} has more than {cap:,} frames (its header did not say how many). Trim it or "
                    f"lower its frame rate; {how_to_raise('max_video_frames')}."
                )
            frame = None
        if frame is None:
            self._stop()
            self._count = self._position if self._count is None else self._count
            return None
        index = self._position
        self._position += 1
        self._kept[index] = frame
        self._kept.move_to_end(index)
        while len(self._kept) > self.keep + (0 in self._kept):
            oldest = next(i for i in self._kept if i != 0)
            del self._kept[oldest]
        return frame

    def __len__(self) -> int:
        if self._count is None:
            self._restart()
            while self._next() is not None:
                pass
            if self._count == 0:
                raise VideoError(f"{self.path.name} contains no frames: pick another video or re-export it.")
        return self._count

    def frame(self, index: int) -> np.ndarray:
        index = int(index)
        if index < 0:
            index += len(self)
        if index in self._kept:
            return self._kept[index]
        if self._decoder is None or index < self._position:
            self._restart()
        while self._position <= index:
            if self._next() is None:
                raise IndexError(f"frame {index} is past the end of {self.path.name} ({self._count} frames).")
        return self._kept[index]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.frame(index)
        indices = range(len(self))[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        frames = np.empty((len(indices), *self.size, 3), dtype=np.uint8)
        for row, i in enumerate(indices):
            frames[row] = self.frame(i)
        return frames

    def __iter__(self):
        index = 0
        while self._count is None or index < self._count:
            try:
                yield self.frame(index)
            except IndexError:
                return
            index += 1


class VideoWriter:
    """`write_video` as frames arrive: `with VideoWriter(path, fps) as writer:
    writer.write(frames)`, called as often as needed with (H, W, 3) or (n, H, W, 3)
    frames. The mp4 is encoded under a temporary name and renamed into place when the
    block ends without an error; an error (or cancellation) removes it, so nothing
    half-written is left where a finished video is expected."""

    def __init__(self, path: str | Path, fps: float = 16.0, audio_path: str | Path | None = None, quality: int = 8):
        self.path, self.fps, self.quality = Path(path), fps, quality
        # The audio file is probed like every input (`dynamictrl.probe`) before a frame is
        # encoded, and muxed in when the frames are done (`_add_audio`).
        self.audio = media.probe(audio_path, media.AUDIO, VideoError) if audio_path else None
        if self.audio is not None and not self.audio.has_audio:
            raise VideoError(f"{Path(audio_path).name} has no audio track to add to {self.path.name}.")
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.frames_written = 0
        self._writer = None
        self._process = None
        self._size = None

    def __enter__(self) -> "VideoWriter":
        return self

    def _open(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._size = (height, width)
        self._writer = imageio_ffmpeg.write_frames(
            str(self.partial),
            (width, height),
            fps=self.fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=self.quality,
            macro_block_size=1,
        )
        self._writer.send(None)
        # imageio-ffmpeg never looks at ffmpeg's exit status: an ffmpeg that was killed or
        # could not write (a full disk) would leave a truncated file to be renamed into
        # place. The process is the generator's local `p` (imageio-ffmpeg 0.8, pinned;
        # tests/test_faults.py fails if that changes).
        self._process = self._writer.gi_frame.f_locals["p"]

    def write(self, frames) -> None:
        """Appends one frame (H, W, 3) or a run of frames (n, H, W, 3) (uint8, or float in [0, 1])."""
        frames = np.asarray(frames)
        batch = _even(to_uint8_frames(frames[None] if frames.ndim == 3 else frames))
        for frame in batch:
            if self._writer is None:
                self._open(*frame.shape[:2])
            elif frame.shape[:2] != self._size:
                raise VideoError(
                    f"Frame size changed from {self._size[1]}x{self._size[0]} to {frame.shape[1]}x{frame.shape[0]}."
                )
            self._writer.send(np.ascontiguousarray(frame))
            self.frames_written += 1

    def __exit__(self, kind, error, traceback) -> None:
        if self._writer is None:
            if kind is None:
                raise VideoError(f"No frames to write to {self.path.name}.")
            return
        try:
            self._writer.close()
            if kind is None:
                status = self._process.wait()
                if status != 0:
                    raise VideoError(
                        f"ffmpeg stopped with exit status {status} while writing {self.path.name} "
                        "(killed, or the disk is full?); nothing was written."
                    )
                if self.audio is not None:
                    _add_audio(self.partial, self.audio, self.path.name)
                os.replace(self.partial, self.path)  # inside: if `path` cannot be replaced, no partial file stays
        except BaseException:
            self.partial.unlink(missing_ok=True)
            raise
        if kind is not None:
            self.partial.unlink(missing_ok=True)


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


class PickedFrames:
    """`count` frames of a video at `fps` (None: native) from `start_s`, decoded while they
    are iterated: one frame in memory at a time, whatever the video's length.

    Each iteration decodes the video again (the frames are the same every time), so a
    second pass (e.g. a preview beside the driving video) costs decoding, not memory.
    The header is read and the limits are checked when the object is made; a video too
    short for `count` frames raises `VideoTooShortError` when the iteration reaches its
    end (with the fixes in the message), unless `loop=True`, which wraps around to the
    start (one more decoding pass per wrap).
    """

    def __init__(
        self,
        path: str | Path,
        count: int,
        fps: float | None = None,
        start_s: float = 0.0,
        loop: bool = False,
        threads: int | None = None,
        limits: Limits | None = None,
    ):
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
        self.path, self.count, self.start_s, self.loop, self.threads = path, count, start_s, loop, threads
        self.info = _probe(path, limits)
        self.meta, self._opened = iter_frames(path, threads, self.info)
        self.source_fps = float(self.meta.get("fps") or 0.0) or 16.0
        self.fps = float(fps) if fps else self.source_fps
        self.target_fps = fps
        self.wanted = sample_indices(self.source_fps, fps, start_s, count)

    def __len__(self) -> int:
        return self.count

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        width, height = self.meta["size"]
        return height, width

    def _decoder(self):
        if self._opened is not None:
            frames, self._opened = self._opened, None
            return frames
        return iter_frames(self.path, self.threads, self.info)[1]

    def close(self) -> None:
        """Stops the decoder opened for the header, if no iteration has taken it."""
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def __iter__(self):
        wanted = self.wanted
        frames_iter = self._decoder()
        position, total = 0, 0
        try:
            for index, frame in enumerate(frames_iter):
                total = index + 1
                while position < self.count and wanted[position] == index:
                    yield frame
                    position += 1
                if position == self.count:
                    break
        finally:
            frames_iter.close()
        if total == 0:
            raise VideoError(f"{self.path.name} contains no frames: pick another video or re-export it.")
        if position == self.count:
            return
        if not self.loop:
            duration = total / self.source_fps
            raise VideoTooShortError(
                f"{self.path.name} is {duration:.2f} s long ({total} frames at {self.source_fps:g} fps); from "
                f"{self.start_s:g} s at {self.target_fps or self.source_fps:g} fps it gives {position} frames but "
                f"{self.count} are needed. Lower the frame count, lower the fps, start earlier, or loop the video.",
                available_frames=position,
            )
        # Wrap the missing source indices around the video's real length: one more
        # decoding pass for every run of rising indices.
        while position < self.count:
            frames_iter, before = self._decoder(), position
            try:
                for index, frame in enumerate(frames_iter):
                    while position < self.count and wanted[position] % total == index:
                        yield frame
                        position += 1
                    if position == self.count or (wanted[position] % total) < index:
                        break
            finally:
                frames_iter.close()
            if position == before:
                raise VideoError(f"{self.path.name} decoded differently on a second pass: re-export it.")


def pick_frames(
    path: str | Path,
    count: int,
    fps: float | None = None,
    start_s: float = 0.0,
    loop: bool = False,
    threads: int | None = None,
    limits: Limits | None = None,
) -> Video:
    """`count` frames of a video at `fps` (None: native) from `start_s`, as one array:
    `PickedFrames` collected (only the chosen frames are kept in memory).

    A video too short for `count` frames is an error that offers the fixes, unless
    `loop=True`, which wraps around to the start. `threads`: decoder threads (None:
    ffmpeg's default); the frames do not depend on it. `limits`: as for `read_video`, and
    `count` may be at most `limits.max_frames`.
    """
    picked = PickedFrames(path, count, fps, start_s, loop, threads, limits)
    buffer = _FrameBuffer(picked.meta, count)
    for position, frame in enumerate(picked):
        buffer.put(position, frame)
    return Video(frames=buffer.result(count), fps=picked.fps)


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column where a size is odd."""
    height, width = frames.shape[1:3]
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    return np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames


def to_uint8_frames(frames) -> np.ndarray:
    """PIL list, float arrays in [0, 1] or uint8 arrays -> (T, H, W, 3) uint8."""
    if isinstance(frames, list):
        frames = np.stack(
            [np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame) for frame in frames]
        )
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"Frames must be (T, H, W, 3) RGB, got shape {frames.shape}.")
    return frames


def write_video(path: str | Path, frames, fps: float = 16.0, audio_path: str | Path | None = None, quality: int = 8):
    """Writes H.264 mp4 (yuv420p, even sizes), optionally muxing an audio file (AAC).

    `frames` is an array/list, or any iterable of (H, W, 3) frames, which is streamed to
    the encoder one frame at a time (long outputs never sit in memory whole); see
    `VideoWriter` for frames that arrive in runs. The audio file is probed like every
    input (`dynamictrl.probe`) before a frame is encoded.
    """
    path = Path(path)
    if isinstance(frames, (list, np.ndarray)):
        frames = to_uint8_frames(frames)
    with VideoWriter(path, fps, audio_path, quality) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def _add_audio(video: Path, audio: media.MediaProbe, name: str) -> None:
    """Muxes the probed audio file's first audio track (AAC) into `video`, replaced in
    place; the frames are copied, not encoded again. Our own ffmpeg command, so the audio
    input gets the probe's allow-lists (imageio-ffmpeg's writer has no options for it)."""
    muxed = video.with_name(video.name.replace(".partial", ".partial-audio"))
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-y",
        *media.ffmpeg_input_options("mov"),
        "-i",
        str(video),
        *audio.ffmpeg_input_options(),
        "-i",
        str(audio.path),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        "-shortest",
        str(muxed),
    ]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            detail = (
                result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit status {result.returncode}"
            )
            raise VideoError(
                f"Could not add the audio of {audio.path.name} to {name}: {detail}. Re-export the audio "
                "(e.g. as wav) and try again; nothing was written."
            )
        os.replace(muxed, video)
    finally:
        muxed.unlink(missing_ok=True)


def longest_pose_clip(
    path: str | Path, fps: float | None = None, start_s: float = 0.0, limits: Limits | None = None
) -> int:
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
        raise VideoError(
            f"{path.name} is {total / source_fps:.2f} s long: the start time {start_s:g} s is past its end."
        )
    step = source_fps / fps if fps else 1.0
    driving = int((total - 1 - indices[0]) / step + 1e-6) + 1  # driving frames available
    if limits is not None:
        driving = min(driving, limits.max_frames - 1)
    return driving // 4 * 4 + 1
