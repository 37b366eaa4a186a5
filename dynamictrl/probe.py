"""One safe probe for every media file a user gives (videos, audio; images use the same
local-file check), whatever the entry point: the Python API, the CLI, the app and the Ray
service (all through `Studio`), the training data builder and the evaluation.

A media container can name other files: an HLS playlist, an ffconcat list, an image
sequence pattern or an SDP description makes ffmpeg open whatever the text names (a file
on the server, a URL). So before anything decodes a user's file:

1. `local_file`: the path must be a regular local file. URLs, devices (/dev/zero), FIFOs,
   sockets and folders are refused by name, before anything opens them.
2. `sniff`: the first bytes are read; playlists, concat lists, SDP and DASH manifests and
   images given as a video are refused by name ("... is an HLS playlist, not a video").
3. `probe`: PyAV opens the file with a protocol allow-list (`file` only) and a demuxer
   allow-list for the kind (`VIDEO`, `AUDIO`): libavformat checks the demuxer it detected
   against the list before that demuxer reads anything, so no demuxer that follows
   references ever runs. Sizes, rates, durations and frame counts come from the stream
   data libavformat parsed, never from ffmpeg's text log (a metadata title can write
   anything there).
4. `ffmpeg_input_options`: every ffmpeg command that decodes a user's file gets the same
   two allow-lists as input options, and the file's absolute path (a name with a colon is
   never taken for a protocol).
"""

import os
import re
import stat
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

PROBE_TIMEOUT_S = 60  # a header is read in milliseconds; only a damaged or hostile file takes longer
SNIFF_BYTES = 4096


class MediaError(ValueError):
    """A media file was refused or could not be read; the message names the file, the
    problem and what to do."""


@dataclass(frozen=True)
class MediaKind:
    word: str  # "video"
    noun: str  # "a video file", as in "... is an HLS playlist, not a video file"
    # libavformat demuxer names allowed for this kind (matched against the detected
    # demuxer's names, e.g. "mov,mp4,m4a,3gp,3g2,mj2" matches "mov").
    formats: tuple[str, ...]
    accepted: str  # the file types a user knows them by, for messages


# None of these demuxers opens another file or URL (mov's external data references are
# off by default and switched off explicitly for ffmpeg, see `ffmpeg_input_options`).
VIDEO_FORMATS = ("mov", "mp4", "matroska", "webm", "avi", "gif", "mpegts", "mpeg", "flv", "asf", "ogg")
AUDIO_FORMATS = ("wav", "w64", "mp3", "flac", "ogg", "aac", "aiff", "caf", *VIDEO_FORMATS)

VIDEO = MediaKind("video", "a video file", VIDEO_FORMATS, "mp4, mov, m4v, mkv, webm, avi, gif, ts, mpg, flv, wmv, ogv")
AUDIO = MediaKind(
    "audio",
    "an audio file",
    AUDIO_FORMATS,
    "wav, mp3, flac, ogg/opus, m4a/aac, aiff, or a video with an audio track (mp4, mov, mkv, webm)",
)
IMAGE = MediaKind("image", "an image file", (), "PNG, JPEG, WebP, HEIC/HEIF, AVIF, TIFF, BMP, GIF")

# What a text file that names other media is, by its first bytes.
_REFERENCE_LISTS = (
    (re.compile(rb"^#EXTM3U"), "an HLS playlist (.m3u8)"),
    (re.compile(rb"^ffconcat\s+version"), "an ffconcat list"),
    (re.compile(rb"^(#[^\n]*\n\s*)*file\s+\S", re.IGNORECASE), "an ffmpeg concat list"),
    (re.compile(rb"^\[playlist\]", re.IGNORECASE), "a PLS playlist"),
    (re.compile(rb"^v=0\s*\n"), "an SDP session description"),
    (re.compile(rb"^<\?xml[^>]*>\s*<MPD", re.IGNORECASE), "a DASH manifest (.mpd)"),
    (re.compile(rb"^<smil", re.IGNORECASE), "a SMIL playlist"),
)
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", None),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# ffmpeg protocols a string could name ("concat:a.mp4|b.mp4", "subfile,,start,..."): a
# path is never one of them, and a local file with such a name is still read as a file.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/+(.*)$")
_PROTOCOL = re.compile(
    r"^(concat|concatf|subfile|pipe|fd|data|file|cache|crypto|async|tee|md5|hls|"
    r"rtmp\w*|rtsp|rtp|srtp|udp|tcp|tls|http\w*|ftp|sftp|smb|gopher\w*|icecast|mmsh|mmst|srt|zmq)[:,]",
    re.IGNORECASE,
)
# An image2 sequence pattern: %d / %03d (sequence) or glob characters.
_PATTERN = re.compile(r"%0?\d*d|[*?\[]")


def local_file(path, kind: MediaKind, error: type[ValueError] = MediaError) -> Path:
    """The absolute path of `path` if it is a regular local file; otherwise `error` naming
    what it is instead (URL, protocol, image-sequence pattern, folder, device, FIFO,
    socket) or that it does not exist. Nothing is opened."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    name = Path(text).name or text
    url = _URL.match(text)
    if url and not os.path.lexists(text):
        # pathlib folds "http://host" into "http:/host": shown as the URL it was.
        shown = f"{url.group(1)}://{url.group(2)}"
        raise error(f"{shown} is a network URL, not {kind.noun}: download it and give the local file.")
    try:
        info = os.stat(text)
    except FileNotFoundError:
        if _PROTOCOL.match(text):
            raise error(f"{text} is an ffmpeg protocol URL, not {kind.noun}: give the path of a local file.") from None
        if kind is not IMAGE and _PATTERN.search(name):
            raise error(
                f"{name} is an image-sequence pattern, not {kind.noun}: join the frames into one file "
                f"first, e.g. `ffmpeg -framerate 16 -i {name} -pix_fmt yuv420p clip.mp4`."
            ) from None
        raise error(
            f"{kind.word.capitalize()} file not found: {text}. Check the path, or upload the file again."
        ) from None
    except OSError as failure:
        raise error(f"{name} cannot be read ({failure.strerror}): check the path and its permissions.") from None
    mode = info.st_mode
    what = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else None
        if stat.S_ISREG(mode)
        else "not a regular file"
    )
    if what is not None:
        raise error(f"{name} is {what}, not {kind.noun}: give the path of {kind.noun} ({kind.accepted}).")
    return Path(os.path.abspath(text))


def sniff(path: Path, kind: MediaKind, error: type[ValueError] = MediaError, name: str | None = None) -> None:
    """Refuses, by name, a text file that names other media (playlist, concat list, SDP,
    DASH manifest) and, for video and audio, an image file, from its first bytes."""
    name = name or path.name
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as failure:
        raise error(f"{name} cannot be read ({failure.strerror}): check the file and its permissions.") from None
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    for pattern, what in _REFERENCE_LISTS:
        if pattern.match(text):
            raise error(
                f"{name} is {what}, not {kind.noun}: lists that name other files are refused. "
                f"Give the media file itself ({kind.accepted})."
            )
    if kind is VIDEO:
        for magic, image_format in _IMAGE_MAGIC:
            if head.startswith(magic) and image_format:
                raise error(
                    f"{name} is an image ({image_format}), not a video: give a video file ({kind.accepted}); "
                    "an image belongs in the reference image."
                )


@dataclass(frozen=True)
class VideoStream:
    width: int  # coded size (a rotation flag may swap it when decoded)
    height: int
    average_rate: Fraction | None  # avg_frame_rate
    base_rate: Fraction | None  # r_frame_rate (ffmpeg's "tbr")
    duration_s: float  # of this stream; 0 when unknown
    frames: int  # from the container's index; 0 when unknown
    codec: str


@dataclass(frozen=True)
class MediaProbe:
    """What libavformat parsed from a file's streams (nothing decoded but the few packets
    it reads to find codec parameters)."""

    path: Path  # absolute: what ffmpeg is given
    format_name: str  # the demuxer, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration_s: float  # of the container; 0 when unknown
    video: VideoStream | None  # the first video stream that is not a cover picture
    audio_duration_s: float | None  # of the first audio stream (None: no audio stream; 0: unknown)

    @property
    def has_audio(self) -> bool:
        return self.audio_duration_s is not None

    def ffmpeg_input_options(self) -> list[str]:
        return ffmpeg_input_options(self.format_name)


def _allowed(format_name: str, kind: MediaKind) -> bool:
    return bool(set(format_name.split(",")) & set(kind.formats))


def ffmpeg_input_options(format_name: str) -> list[str]:
    """ffmpeg input options that keep a decode of a probed file to the local file and to
    the one demuxer the probe detected (`format_name`)."""
    demuxer = format_name.split(",")[0]
    options = ["-protocol_whitelist", "file", "-format_whitelist", demuxer]
    if demuxer == "mov":
        options += ["-enable_drefs", "0"]  # never follow an mp4/mov's external data references
    return options


def _seconds(value, time_base) -> float:
    return float(value * time_base) if value is not None and time_base is not None else 0.0


def probe(path, kind: MediaKind, error: type[ValueError] = MediaError, unreadable=None) -> MediaProbe:
    """`local_file`, `sniff`, then the file's streams through PyAV with the allow-lists.

    `unreadable(name, detail)` makes the error for a file libavformat cannot parse (the
    caller's wording: "Could not decode ..."); by default a generic one."""
    import av

    shown = Path(os.fspath(path)).name
    absolute = local_file(path, kind, error)
    sniff(absolute, kind, error, shown)
    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(kind.formats)}
    try:
        container = av.open(str(absolute), mode="r", options=options, timeout=PROBE_TIMEOUT_S)
    except av.error.ArgumentError:
        # EINVAL from avformat_open_input: the detected demuxer is not on the list.
        raise error(
            f"{shown} is not {kind.noun} in a format accepted here: use {kind.accepted}. Convert it first, "
            f"e.g. `ffmpeg -i {shown} {'-c:v libx264 -pix_fmt yuv420p fixed.mp4' if kind is VIDEO else 'speech.wav'}`."
        ) from None
    except (av.error.FFmpegError, OSError) as failure:
        detail = getattr(failure, "strerror", None) or str(failure)
        if unreadable is not None:
            raise unreadable(shown, detail) from None
        raise error(f"Could not read {shown} ({detail}): the file is damaged or not {kind.noun}.") from None
    with container:
        format_name = container.format.name
        if not _allowed(format_name, kind):  # the demuxer checked it; this guards a changed library
            raise error(f"{shown} is {format_name}, not {kind.noun} in a format accepted here ({kind.accepted}).")
        video = None
        for stream in container.streams.video:
            if stream.disposition & av.stream.Disposition.attached_pic:
                continue  # an audio file's cover picture
            context = stream.codec_context
            video = VideoStream(
                width=int(context.width or 0),
                height=int(context.height or 0),
                average_rate=stream.average_rate or None,
                base_rate=stream.base_rate or None,
                duration_s=_seconds(stream.duration, stream.time_base),
                frames=int(stream.frames or 0),
                codec=context.name or "unknown",
            )
            break
        audio_duration = None
        if container.streams.audio:
            stream = container.streams.audio[0]
            audio_duration = _seconds(stream.duration, stream.time_base)
        duration = container.duration / av.time_base if container.duration and container.duration > 0 else 0.0
    return MediaProbe(absolute, format_name, duration, video, audio_duration)


def count_video_packets(probed: MediaProbe, stop_after: int | None = None) -> int:
    """The frames of the probed video stream, counted from its packets (nothing decoded);
    stops once `stop_after` is passed (a file that lies about its length)."""
    import av

    options = {"protocol_whitelist": "file", "format_whitelist": probed.format_name.split(",")[0]}
    count = 0
    with av.open(str(probed.path), mode="r", options=options, timeout=PROBE_TIMEOUT_S) as container:
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            return 0
        for packet in container.demux(streams[0]):
            # The demuxer's final empty packet carries no frame, nor does a packet cut off
            # by the end of a truncated file (the decoder drops it too).
            if packet.size and not packet.is_corrupt:
                count += 1
                if stop_after is not None and count > stop_after:
                    break
    return count
