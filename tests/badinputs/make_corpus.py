"""Writes the bad-input corpus: every file a user could plausibly (or maliciously) hand
DynamiCtrl Studio, made from numpy, PIL and the ffmpeg inside imageio-ffmpeg, so the
corpus is reproducible and no binary is checked in.

    python tests/badinputs/make_corpus.py OUT_DIR        # writes the files, prints the table

`CASES` is the list the tests (`tests/test_badinputs.py`), `README.md` here and
`tests/RELIABILITY.md` follow: a name, the stage it enters, the file (None for settings
and prompts given as values) and what must happen. Everything is small (under 1 MB per
file, about 3 MB in all) and fast to make (a few seconds on 2 cores): the 8K video is two
frames of one colour, the two-hour audio is FLAC of a tone then silence (FLAC stores
silence in a few bytes per block), the decompression bombs are PNGs of zeros.
"""

import math
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

# The tiny DWPose of the tests finds people (always the same two) in a frame whose
# top-left pixel is red, and nobody when it is black (dynamictrl/testing/onnx.py).
PERSON = "drawbox=x=0:y=0:w=16:h=16:color=red:t=fill"


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # reference image | driving video | pose video | lip-sync video | speech audio | prompt | settings
    file: str | None  # in the corpus folder; None: the input is a value (`value`)
    what: str
    expected: str  # "error: ..." (the message must say what and how to fix) or "ok: ..." (a correct result)
    value: dict = field(default_factory=dict)  # settings overrides / prompt source, for value cases


CASES = [
    # ------------------------------------------------------------------ driving videos (extract_poses)
    Case(
        "truncated_mp4",
        "driving video",
        "truncated.mp4",
        "an mp4 cut in half; its index (moov) was at the end",
        "error: could not decode, re-encode command given",
    ),
    Case(
        "truncated_mp4_playable",
        "driving video",
        "truncated_faststart.mp4",
        "an mp4 cut at 60%, index at the front: the first part still plays",
        "ok: 9 pose frames from the part that plays",
    ),
    Case(
        "cut_after_header",
        "driving video",
        "cut_after_header.mp4",
        "an mp4 that ends right after its header: a video track, no media data",
        "error: video track but no frames",
    ),
    Case(
        "corrupt_mp4",
        "driving video",
        "corrupt.mp4",
        "an mp4 with 300 bytes of its media data overwritten",
        "ok: the decoder conceals the damage; 9 pose frames",
    ),
    Case("garbage_mp4", "driving video", "garbage.mp4", "random bytes named .mp4", "error: could not decode"),
    Case("empty_mp4", "driving video", "empty.mp4", "a 0-byte file", "error: could not decode"),
    Case(
        "zero_frame_video",
        "driving video",
        "zero_frames.mp4",
        "a valid mp4 whose video track has no samples",
        "error: video track but no frames",
    ),
    Case("one_frame_video", "driving video", "one_frame.mp4", "a 1-frame video", "error: too short, use --loop"),
    Case(
        "video_8k",
        "driving video",
        "8k.mp4",
        "7680x4320 (two frames)",
        "error: limit 4096 px a side, DYNAMICTRL_MAX_VIDEO_SIDE, downscale command",
    ),
    Case("video_300fps", "driving video", "300fps.mp4", "1 s at 300 fps", "ok: resampled to 16 fps, 9 pose frames"),
    Case(
        "video_vfr",
        "driving video",
        "vfr.mp4",
        "variable frame rate: 1 s at 10 fps, 0.5 s at 60 fps, 1 s at 10 fps (frame times kept, average 20 fps)",
        "ok: resampled evenly in time (50 frames at the 20 fps average), 9 pose frames",
    ),
    Case(
        "video_rotated",
        "driving video",
        "rotated.mp4",
        "a 64x48 video with a 90 degree display rotation (phone)",
        "ok: frames come upright (48x64), 9 pose frames",
    ),
    Case(
        "audio_renamed_mp4",
        "driving video",
        "audio_only.mp4",
        "an AAC audio file renamed .mp4",
        "error: no video track (is it an audio file?)",
    ),
    Case(
        "audio_with_cover_mp4",
        "driving video",
        "audio_with_cover.mp4",
        "an audio file with cover art renamed .mp4 (ffmpeg lists the cover as a video stream)",
        "error: no video track (is it an audio file?)",
    ),
    Case(
        "video_11_minutes",
        "driving video",
        "eleven_minutes.mp4",
        "11 minutes (16x16 at 1 fps)",
        "error: limit 10 min, DYNAMICTRL_MAX_VIDEO_SECONDS, trim command",
    ),
    Case("video_no_person", "driving video", "no_person.mp4", "nobody in any frame", "error: no person found"),
    Case(
        "person_cut_off",
        "driving video",
        "cut_off.mp4",
        "a 256x16 strip: the dancers' boxes lie almost wholly below the bottom border",
        "ok: 9 pose frames",
    ),
    # ------------------------------------------------------------------ pose videos (generate)
    Case("pose_video_8k", "pose video", "8k.mp4", "an 8K file as the pose video", "error: limit 4096 px a side"),
    Case(
        "pose_video_zero_frames",
        "pose video",
        "zero_frames.mp4",
        "a pose video with no frames",
        "error: video track but no frames",
    ),
    Case(
        "pose_video_one_frame",
        "pose video",
        "one_frame.mp4",
        "a 1-frame pose video for 9 frames",
        "error: fewer frames than asked, use --frames 1",
    ),
    # ------------------------------------------------------------------ reference images
    Case(
        "exif_rotated_jpeg",
        "reference image",
        "exif_rotated.jpg",
        "a phone JPEG stored sideways, EXIF orientation 6",
        "ok: rotated upright (64x96)",
    ),
    Case("cmyk_jpeg", "reference image", "cmyk.jpg", "a CMYK JPEG", "ok: converted to RGB; generates"),
    Case("png_16_bit", "reference image", "gray16.png", "a 16-bit greyscale PNG (mode I;16)", "ok: scaled to 8 bits"),
    Case("png_rgba", "reference image", "rgba.png", "an RGBA PNG, half transparent", "ok: transparent pixels black"),
    Case(
        "png_palette_transparent",
        "reference image",
        "palette.png",
        "a palette PNG with a transparent colour",
        "ok: transparent pixels black",
    ),
    Case("image_1x1", "reference image", "one_pixel.png", "a 1x1 image", "error: 16 to 8192 px a side"),
    Case(
        "png_bomb_huge",
        "reference image",
        "bomb_60000.png",
        "a 400 KB PNG declaring 60000x60000 (3.6 gigapixels)",
        "error: decompression bomb, DYNAMICTRL_MAX_IMAGE_PIXELS",
    ),
    Case(
        "png_bomb_moderate",
        "reference image",
        "bomb_8000.png",
        "a 10 KB PNG declaring 8000x8000 (64 MP, under 8192 a side)",
        "error: over 50 megapixels",
    ),
    Case(
        "animated_gif", "reference image", "animated.gif", "an animated GIF (3 frames)", "ok: its first frame is used"
    ),
    Case("truncated_png", "reference image", "truncated.png", "a PNG cut in half", "error: incomplete or corrupt"),
    Case("text_as_png", "reference image", "text.png", "a text file named .png", "error: could not read the image"),
    Case("no_person_image", "reference image", "no_person.png", "nobody in the reference", "error: no person found"),
    Case(
        "several_people",
        "reference image",
        "several_people.png",
        "two people found in the reference",
        "ok: one person (the first tracked) is animated",
    ),
    # ------------------------------------------------------------------ speech audio (lip-sync)
    Case(
        "silent_audio",
        "speech audio",
        "silent.wav",
        "0.5 s of digital silence",
        "error: silent, use a clip with speech",
    ),
    Case("zero_second_audio", "speech audio", "zero_seconds.wav", "a WAV with no samples", "error: 0 s long"),
    Case(
        "two_hour_audio",
        "speech audio",
        "two_hours.flac",
        "2 hours (720 KB FLAC: 1 s tone, then silence)",
        "error: limit 10 min, DYNAMICTRL_MAX_AUDIO_SECONDS, refused before decoding",
    ),
    Case("nan_audio", "speech audio", "nan.wav", "a float WAV holding NaN samples", "error: NaN samples, re-export"),
    Case("text_as_wav", "speech audio", "text.wav", "a text file named .wav", "error: could not be decoded"),
    Case(
        "video_without_sound",
        "speech audio",
        "no_sound.mp4",
        "a video with no audio track as the speech",
        "error: no audio stream",
    ),
    # ------------------------------------------------------------------ lip-sync videos
    Case("lipsync_video_8k", "lip-sync video", "8k.mp4", "an 8K video to lip-sync", "error: limit 4096 px a side"),
    Case(
        "lipsync_zero_frames",
        "lip-sync video",
        "zero_frames.mp4",
        "a video with no frames to lip-sync",
        "error: video track but no frames",
    ),
    Case(
        "lipsync_audio_as_video",
        "lip-sync video",
        "audio_only.mp4",
        "an audio file as the video",
        "error: no video track",
    ),
    # ------------------------------------------------------------------ prompts
    Case(
        "prompt_bytes_not_utf8",
        "prompt",
        "prompt_latin1.txt",
        "Latin-1 bytes passed as bytes",
        "error: bytes, not text: decode it first",
        {"as": "bytes"},
    ),
    Case(
        "prompt_undecodable_text",
        "prompt",
        "prompt_latin1.txt",
        "Latin-1 bytes decoded as UTF-8 with surrogateescape (what a CLI argument becomes)",
        "error: not valid UTF-8, save as UTF-8",
        {"as": "surrogateescape"},
    ),
    Case(
        "prompt_10000_chars",
        "prompt",
        "prompt_10000.txt",
        "a 10,000-character prompt",
        "error: limit 2,000 characters, DYNAMICTRL_MAX_PROMPT_CHARS",
        {"as": "text"},
    ),
    Case(
        "prompt_over_t5_window",
        "prompt",
        "prompt_long_words.txt",
        "1,900 characters: under the character limit, over T5's 226 tokens",
        "error: T5 tokens, the rest would be ignored",
        {"as": "text"},
    ),
    Case(
        "prompt_emoji_and_controls",
        "prompt",
        "prompt_emoji.txt",
        "emoji, a tab, a NUL and right-to-left text",
        "ok: generates",
        {"as": "text"},
    ),
    # ------------------------------------------------------------------ numeric settings (generate / extract_poses)
    Case("steps_negative", "settings", None, "steps = -1", "error: steps must be 1..200", {"steps": -1}),
    Case("guidance_nan", "settings", None, "guidance = NaN", "error: finite number", {"guidance": math.nan}),
    Case("guidance_huge", "settings", None, "guidance = 1e30", "error: 0..20", {"guidance": 1e30}),
    Case("seed_huge", "settings", None, "seed = 2**80", "error: seed range", {"seed": 2**80}),
    Case("fps_nan", "settings", None, "fps = NaN", "error: finite number", {"fps": math.nan}),
    Case(
        "frames_huge",
        "settings",
        None,
        "num_frames = 1,000,000,001 (4k+1)",
        "error: limit 2049 frames, DYNAMICTRL_MAX_FRAMES",
        {"num_frames": 10**9 + 1},
    ),
    Case("frames_negative", "settings", None, "num_frames = -3", "error: 4k+1", {"num_frames": -3}),
    Case("frames_not_4k_plus_1", "settings", None, "num_frames = 10", "error: 4k+1, use 9 or 13", {"num_frames": 10}),
    Case("size_not_multiple_of_16", "settings", None, "width = 50", "error: multiples of 16", {"width": 50}),
    Case("width_float_nan", "settings", None, "width = NaN", "error: whole number", {"width": math.nan}),
    Case(
        "pose_start_nan",
        "settings",
        None,
        "PoseSettings.start_s = NaN (extract_poses)",
        "error: finite number",
        {"pose": {"start_s": math.nan}},
    ),
    Case(
        "pose_fps_negative",
        "settings",
        None,
        "PoseSettings.fps = -5 (extract_poses)",
        "error: fps 0..120",
        {"pose": {"fps": -5.0}},
    ),
    Case(
        "pose_frames_huge",
        "settings",
        None,
        "PoseSettings.num_frames = 100,001 (extract_poses)",
        "error: limit 2049 frames",
        {"pose": {"num_frames": 100_001}},
    ),
]


# ---------------------------------------------------------------------------- issue 15: the probe
# Files that make a demuxer open other files (playlists, concat lists, sequence patterns),
# things that are not files (devices, FIFOs, folders, URLs), text that lies about the
# length, photos from phones, PNG metadata bombs, and outputs that cannot be written.
# Made by `make_probe_corpus`; run through the API and the CLI by tests/test_badinputs.py.
PLAYLIST = "an m3u8 playlist naming dance.mp4 in the corpus by its absolute path (ffmpeg alone decodes it)"
PROBE_CASES = [
    Case(
        "hls_playlist_driving",
        "driving video",
        "playlist.m3u8",
        PLAYLIST,
        "error: is an HLS playlist, not a video file",
    ),
    Case("hls_playlist_pose", "pose video", "playlist.m3u8", PLAYLIST, "error: is an HLS playlist, not a video file"),
    Case(
        "hls_playlist_speech", "speech audio", "playlist.m3u8", PLAYLIST, "error: is an HLS playlist, not an audio file"
    ),
    Case(
        "hls_playlist_lipsync",
        "lip-sync video",
        "playlist.m3u8",
        PLAYLIST,
        "error: is an HLS playlist, not a video file",
    ),
    Case(
        "hls_playlist_renamed_mp4",
        "driving video",
        "playlist_renamed.mp4",
        "the same playlist named .mp4",
        "error: is an HLS playlist, not a video file",
    ),
    Case(
        "ffconcat_list",
        "driving video",
        "list.ffconcat",
        "an ffconcat list naming dance.mp4 (ffmpeg alone decodes it)",
        "error: is an ffconcat list, not a video file",
    ),
    Case(
        "ffconcat_list_speech",
        "speech audio",
        "list.ffconcat",
        "the ffconcat list as the speech",
        "error: is an ffconcat list, not an audio file",
    ),
    Case(
        "image_sequence_pattern",
        "driving video",
        None,
        "seq_%03d.png, a pattern matching three PNG frames",
        "error: is an image-sequence pattern, not a video file",
        {"path": "seq_%03d.png"},
    ),
    Case(
        "image_as_video",
        "driving video",
        "reference.png",
        "a PNG photo as the driving video",
        "error: is an image (PNG), not a video",
    ),
    Case(
        "network_url",
        "driving video",
        None,
        "http://127.0.0.1:9/dance.mp4",
        "error: is a network URL",
        {"path": "http://127.0.0.1:9/dance.mp4"},
    ),
    Case(
        "spoofed_duration_video",
        "driving video",
        "eleven_minutes_titled.mp4",
        "11 minutes (16x16 at 1 fps) whose title is 'Duration: 00:00:05.00' (it fooled the text probe)",
        "error: lasts 11 min, limit 10 min",
    ),
    Case(
        "spoofed_duration_audio",
        "speech audio",
        "eleven_minutes_titled.flac",
        "11 minutes of FLAC whose title is 'Duration: 00:00:05.00'",
        "error: lasts 11 min, limit 10 min",
    ),
    Case(
        "dev_zero_video",
        "driving video",
        "dev_zero.mp4",
        "a symlink to /dev/zero named .mp4",
        "error: is a device, not a video file",
    ),
    Case(
        "dev_zero_speech",
        "speech audio",
        "dev_zero.mp4",
        "a symlink to /dev/zero as the speech",
        "error: is a device, not an audio file",
    ),
    Case(
        "dev_zero_image",
        "reference image",
        "dev_zero.png",
        "a symlink to /dev/zero named .png",
        "error: is a device, not an image file",
    ),
    Case(
        "fifo_video",
        "driving video",
        "fifo.mp4",
        "a named pipe (FIFO) named .mp4 (reading it would block)",
        "error: is a named pipe (FIFO)",
    ),
    Case("fifo_image", "reference image", "fifo.png", "a FIFO named .png", "error: is a named pipe (FIFO)"),
    Case("folder_as_video", "pose video", "folder.mp4", "a folder named .mp4", "error: is a folder, not a video file"),
    Case(
        "folder_as_speech",
        "speech audio",
        "folder.mp4",
        "a folder named .mp4 as the speech",
        "error: is a folder, not an audio file",
    ),
    Case(
        "heic_photo",
        "reference image",
        "photo.heic",
        "an iPhone-style HEIC photo (HEVC still, pillow-heif)",
        "ok: read (96x128), generates",
    ),
    Case(
        "png_huge_iccp",
        "reference image",
        "huge_iccp.png",
        "a 64 KB PNG whose colour profile (iCCP) inflates to 64 MB",
        "error: names the file, metadata chunk bomb, re-save",
    ),
    Case(
        "png_huge_ztxt",
        "reference image",
        "huge_ztxt.png",
        "a 64 KB PNG whose zTXt text chunk inflates to 64 MB",
        "error: names the file, metadata chunk bomb, re-save",
    ),
    Case(
        "eps_as_image",
        "reference image",
        "ghostscript.eps",
        "an EPS file (PIL would hand it to Ghostscript)",
        "error: not an image in a format accepted here",
    ),
    Case(
        "output_is_folder",
        "output",
        None,
        "generate with --out naming an existing folder out_dir.mp4",
        "error: the output is a folder, before any model loads",
        {"call": "generate", "out": "out_dir.mp4"},
    ),
    Case(
        "output_folder_unwritable",
        "output",
        None,
        "lip-sync with --out in /proc (not writable, even by root)",
        "error: folder not writable, before any model loads",
        {"call": "lipsync", "out": "/proc/dynamictrl-out.mp4"},
    ),
    Case(
        "pose_output_is_folder",
        "output",
        None,
        "pose extraction with --out naming an existing folder",
        "error: the output is a folder",
        {"call": "pose", "out": "out_dir.mp4"},
    ),
]
CASES = CASES + PROBE_CASES


# ---------------------------------------------------------------------------- uploads served back (app)
# Files a visitor uploads to the web app and then opens (or lures someone else into opening)
# from the app's own origin: `tests/test_badinputs.py` uploads each and fetches it back from
# `/gradio_api/file=`. Refused: nothing but inert media and manifests is served; served: as an
# attachment with nosniff (ui/serving.py). Kept apart from CASES: no Python API stage.
XSS_MARKER = "dynamictrl-xss"  # what a script in these files would write (the browser test looks for it)
XSS_SCRIPT = f"localStorage.setItem('{XSS_MARKER}', location.href); window.top.document.title = '{XSS_MARKER}';"
SERVED_CASES = [
    Case(
        "upload_html",
        "served upload",
        "page.html",
        "an HTML page with a script",
        "refused: 403, never rendered on the app's origin",
    ),
    Case("upload_svg", "served upload", "drawing.svg", "an SVG image with a script", "refused: 403"),
    Case(
        "upload_js",
        "served upload",
        "script.js",
        "a JavaScript file (for a <script src> on another page)",
        "refused: 403",
    ),
    Case("upload_xhtml", "served upload", "page.xhtml", "an XHTML page with a script", "refused: 403"),
    Case(
        "upload_m3u8", "served upload", "served_playlist.m3u8", "an HLS playlist naming a server file", "refused: 403"
    ),
    Case(
        "upload_html_as_png",
        "served upload",
        "polyglot.png",
        "HTML with a script, named .png",
        "served as image/png, attachment, nosniff, sandbox CSP: never rendered as a page",
    ),
    Case(
        "upload_png",
        "served upload",
        "reference.png",
        "a real PNG (the control)",
        "served as image/png, attachment, nosniff, sandbox CSP",
    ),
]


def write_served_cases(folder: Path) -> None:
    page = f"<!doctype html><html><head><title>upload</title></head><body><script>{XSS_SCRIPT}</script></body></html>"
    (folder / "page.html").write_text(page)
    (folder / "polyglot.png").write_text(page)
    (folder / "page.xhtml").write_text(
        f'<html xmlns="http://www.w3.org/1999/xhtml"><body><script>{XSS_SCRIPT}</script></body></html>'
    )
    (folder / "drawing.svg").write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        f"<script>{XSS_SCRIPT}</script><rect width='10' height='10'/></svg>"
    )
    (folder / "script.js").write_text(XSS_SCRIPT)
    (folder / "served_playlist.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n#EXT-X-ENDLIST\n"
    )


# ---------------------------------------------------------------------------- helpers


def ffmpeg(*args: str) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {result.stderr.strip()}")


def lavfi_video(
    path: Path,
    size: str,
    rate: float,
    frames: int,
    colour: str = "blue",
    person: bool = True,
    extra: tuple[str, ...] = (),
    pattern: bool = False,
) -> Path:
    """A flat-colour (or moving test pattern) H.264 mp4, with the red block that makes the
    tiny DWPose see people."""
    source = f"testsrc2=s={size}:r={rate}" if pattern else f"color=c={colour}:s={size}:r={rate}"
    filters = source + (f",{PERSON}" if person else "")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        filters,
        "-frames:v",
        str(frames),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        *extra,
        str(path),
    )
    return path


def variable_frame_rate(path: Path, size: str, person: bool = False) -> Path:
    """1 s at 10 fps (grey 0x28), 0.5 s at 60 fps (0x78), 1 s at 10 fps (0xc8), joined by
    ffmpeg's concat filter and written with their own timestamps (`-fps_mode vfr`): 50
    frames over 2.5 s, average 20 fps. (The concat demuxer would misplace the joins.)"""
    parts = [(10, 1.0, "0x282828"), (60, 0.5, "0x787878"), (10, 1.0, "0xc8c8c8")]
    inputs = []
    for rate, seconds, colour in parts:
        inputs += ["-f", "lavfi", "-i", f"color=c={colour}:s={size}:r={rate}:d={seconds}"]
    joined = "[0][1][2]concat=n=3:v=1:a=0" + (f",{PERSON}" if person else "")
    ffmpeg(*inputs, "-filter_complex", joined, "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    return path


def empty_sample_tables(data: bytes) -> bytes:
    """The moov box of a fast-start mp4 with every sample table emptied and every duration
    zeroed, without its media data: a well-formed file whose video track has no frames."""
    buffer = bytearray(data)
    containers = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
    counted = {b"stts", b"stsc", b"stco", b"co64", b"stss", b"ctts", b"elst", b"sdtp"}

    def walk(start: int, end: int) -> None:
        position = start
        while position + 8 <= end:
            size, kind = struct.unpack(">I4s", buffer[position : position + 8])
            if size < 8:
                return
            if kind in containers:
                walk(position + 8, position + size)
            elif kind in counted:
                buffer[position + 12 : position + 16] = bytes(4)  # entry_count
            elif kind == b"stsz":
                buffer[position + 16 : position + 20] = bytes(4)  # sample_count
            elif kind in (b"mvhd", b"mdhd") and buffer[position + 8] == 0:
                buffer[position + 24 : position + 28] = bytes(4)  # duration (version 0 layout)
            elif kind == b"tkhd" and buffer[position + 8] == 0:
                buffer[position + 28 : position + 32] = bytes(4)
            position += size

    walk(0, len(buffer))
    media = buffer.find(b"mdat")
    return bytes(buffer[: media - 4])


def png_of_zeros(path: Path, width: int, height: int) -> Path:
    """A 1-bit greyscale PNG of the given size whose rows are all zero, compressed row by
    row so that not even the generator holds the image (60000x60000 compresses to ~400 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, (4 << 20) // len(row))
    block = row * rows_per_block
    parts, remaining = [], height
    while remaining > 0:
        count = min(rows_per_block, remaining)
        parts.append(compressor.compress(block if count == rows_per_block else row * count))
        remaining -= count
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )
    return path


def red_person(width: int, height: int, background=(40, 90, 160)) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = background
    image[:16, :16] = (255, 0, 0)
    return image


def wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    from scipy.io import wavfile

    wavfile.write(path, rate, samples)
    return path


LONG_WORDS = (
    "A young woman in a flowing red dress dances barefoot across a sunlit wooden stage, her arms "
    "sweeping in wide arcs while the golden evening light falls through tall arched windows behind her. "
)


# ---------------------------------------------------------------------------- the corpus


def make_corpus(folder: str | Path) -> Path:
    """Writes every file of `CASES` into `folder` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)

    # Videos. The source of the truncated/corrupt cases: 80 frames that a person is in.
    source = lavfi_video(folder / "_source.mp4", "160x120", 16, 80, extra=("-g", "8"), pattern=True)
    data = source.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    fast = lavfi_video(
        folder / "_source_faststart.mp4", "160x120", 16, 80, extra=("-g", "8", "-movflags", "+faststart"), pattern=True
    )
    fast_data = fast.read_bytes()
    (folder / "truncated_faststart.mp4").write_bytes(fast_data[: len(fast_data) * 6 // 10])
    (folder / "cut_after_header.mp4").write_bytes(fast_data[: fast_data.find(b"mdat") + 4])
    damaged = bytearray(fast_data)
    media = fast_data.find(b"mdat") + 4
    for position in rng.integers(media + 2000, len(damaged), 300):
        damaged[position] = rng.integers(0, 256)
    (folder / "corrupt.mp4").write_bytes(bytes(damaged))
    (folder / "garbage.mp4").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "zero_frames.mp4").write_bytes(empty_sample_tables(fast_data))
    source.unlink()
    fast.unlink()

    lavfi_video(folder / "one_frame.mp4", "64x48", 16, 1)
    lavfi_video(folder / "8k.mp4", "7680x4320", 16, 2)
    lavfi_video(folder / "300fps.mp4", "64x48", 300, 300)
    variable_frame_rate(folder / "vfr.mp4", "64x48", person=True)
    # Red in every corner: whichever way the player turns it, the top-left pixel is red.
    corners = ",".join(f"drawbox=x={x}:y={y}:w=16:h=16:color=red:t=fill" for x in (0, 48) for y in (0, 32))
    upright = folder / "_upright.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"color=c=blue:s=64x48:r=16,{corners}",
        "-frames:v",
        "16",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(upright),
    )
    ffmpeg("-display_rotation", "90", "-i", str(upright), "-c", "copy", str(folder / "rotated.mp4"))
    upright.unlink()
    lavfi_video(folder / "eleven_minutes.mp4", "16x16", 1, 660, person=False)
    lavfi_video(folder / "no_person.mp4", "64x48", 16, 20, colour="black", person=False)
    lavfi_video(folder / "cut_off.mp4", "256x16", 16, 20)

    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=300:duration=1", "-c:a", "aac", "-f", "mp4", str(folder / "audio_only.mp4")
    )
    cover = folder / "_cover.png"
    Image.fromarray(red_person(64, 64)).save(cover)
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:duration=1",
        "-i",
        str(cover),
        "-map",
        "0:a",
        "-map",
        "1:v",
        "-c:a",
        "aac",
        "-c:v",
        "png",
        "-disposition:v",
        "attached_pic",
        "-f",
        "mp4",
        str(folder / "audio_with_cover.mp4"),
    )
    cover.unlink()
    lavfi_video(folder / "no_sound.mp4", "64x48", 16, 8)

    # Images.
    sideways = np.zeros((64, 96, 3), np.uint8)
    sideways[:, :48] = (255, 255, 255)  # left half white: after a 90 degree turn, the top half
    image = Image.fromarray(sideways)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    Image.fromarray(red_person(96, 128)).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    ramp = np.linspace(0, 65535, 96 * 128).reshape(128, 96).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "gray16.png")  # PIL stores uint16 as mode I;16
    rgba = np.dstack([red_person(96, 128), np.zeros((128, 96), np.uint8)])
    rgba[:64, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    palette = Image.fromarray(red_person(96, 128)).convert("P", palette=Image.ADAPTIVE, colors=4)
    transparent_index = palette.getpixel((95, 127))
    palette.save(folder / "palette.png", transparency=transparent_index)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one_pixel.png")
    png_of_zeros(folder / "bomb_60000.png", 60000, 60000)
    png_of_zeros(folder / "bomb_8000.png", 8000, 8000)
    frames = [
        Image.fromarray(red_person(96, 128, background)) for background in ((0, 160, 0), (0, 0, 160), (160, 160, 0))
    ]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.fromarray(rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)).save(folder / "_full.png")
    full = (folder / "_full.png").read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    (folder / "_full.png").unlink()
    (folder / "text.png").write_text("this is not an image\n")
    Image.new("RGB", (96, 128), (0, 0, 0)).save(folder / "no_person.png")
    Image.fromarray(red_person(96, 128)).save(folder / "several_people.png")

    # Audio.
    wav(folder / "silent.wav", np.zeros(8000, np.int16))
    wav(folder / "zero_seconds.wav", np.zeros(0, np.int16))
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=220:sample_rate=8000:duration=1",
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=8000:cl=mono",
        "-filter_complex",
        "[0][1]concat=n=2:v=0:a=1,atrim=duration=7200",
        "-ac",
        "1",
        "-c:a",
        "flac",
        str(folder / "two_hours.flac"),
    )
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(8000) / 16000)).astype(np.float32)
    tone[100:200] = np.nan
    wav(folder / "nan.wav", tone)
    (folder / "text.wav").write_text("this is not audio\n")
    t = np.arange(8000) / 16000
    wav(folder / "speech.wav", (8000 * np.sin(2 * np.pi * 150 * t)).astype(np.int16))  # the good audio of video cases
    faces = np.random.default_rng(5).integers(0, 255, (6, 120, 160, 3), dtype=np.uint8)
    faces[:, :16, :16] = (255, 0, 0)
    talk = folder / "_talk.npy"  # the good video of audio cases, encoded below without dynamictrl
    np.save(talk, faces)
    writer = imageio_ffmpeg.write_frames(
        str(folder / "talk.mp4"),
        (160, 120),
        fps=25,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-v", "error"],
    )
    writer.send(None)
    for frame in faces:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    talk.unlink()

    # Prompts (as files, so the corpus holds every case's input).
    (folder / "prompt_latin1.txt").write_bytes(
        "Une danseuse en robe rouge, café au lait, très élégante.".encode("latin-1")
    )
    (folder / "prompt_10000.txt").write_text(("a dancer " * 1200)[:10_000])
    long_words = (LONG_WORDS * 20)[:1900]
    (folder / "prompt_long_words.txt").write_text(long_words)
    (folder / "prompt_emoji.txt").write_text("A dancer 💃🏽 spins\tin a red dress\x00 under lights, مرحبا, 舞者.")

    # The good reference and pose video the other cases are paired with.
    Image.fromarray(red_person(96, 128)).save(folder / "reference.png")
    lavfi_video(folder / "pose.mp4", "48x64", 16, 12)
    lavfi_video(folder / "dance.mp4", "64x48", 16, 24)

    make_probe_corpus(folder)
    write_served_cases(folder)

    files = [case.file for case in [*CASES, *SERVED_CASES] if case.file]
    missing = [name for name in files if not os.path.lexists(folder / name)]
    if missing:
        raise RuntimeError(f"make_corpus did not write {missing}")
    return folder


def png_with_chunk(path: Path, kind: bytes, payload_prefix: bytes, inflated_bytes: int) -> Path:
    """A 32x32 PNG with one extra chunk before IDAT: `payload_prefix` then zlib data that
    inflates to `inflated_bytes` zeros (64 MB compress to about 64 KB)."""
    base = path.with_name("_base.png")
    Image.fromarray(red_person(32, 32)).save(base)
    data = base.read_bytes()
    base.unlink()
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    body = b"".join(compressor.compress(block) for _ in range(inflated_bytes >> 20)) + compressor.flush()
    payload = payload_prefix + body
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    end_of_header = 8 + 25  # signature + IHDR
    path.write_bytes(data[:end_of_header] + chunk + data[end_of_header:])
    return path


def write_playlist(path: Path, target: Path) -> Path:
    """An HLS playlist naming `target` (a local media file) by its absolute path: what plain
    ffmpeg would follow and decode (the server-file-read attack of issue 15)."""
    target = Path(target).resolve()
    path.write_text(f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.5,\n{target}\n#EXT-X-ENDLIST\n")
    return path


def make_probe_corpus(folder: Path) -> None:
    """The files of `PROBE_CASES` (the good inputs they name are written by `make_corpus`)."""
    import pillow_heif

    playlist = write_playlist(folder / "playlist.m3u8", folder / "dance.mp4")
    (folder / "playlist_renamed.mp4").write_text(playlist.read_text())
    # The concat demuxer refuses absolute names by default, so the list names its neighbour.
    (folder / "list.ffconcat").write_text("ffconcat version 1.0\nfile dance.mp4\n")
    for index in range(1, 4):
        Image.fromarray(red_person(64, 48)).save(folder / f"seq_{index:03d}.png")
    title = ("-metadata", "title=Duration: 00:00:05.00")
    lavfi_video(folder / "eleven_minutes_titled.mp4", "16x16", 1, 660, person=False, extra=title)
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=220:sample_rate=8000:duration=1",
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=8000:cl=mono",
        "-filter_complex",
        "[0][1]concat=n=2:v=0:a=1,atrim=duration=660",
        "-ac",
        "1",
        *title,
        "-c:a",
        "flac",
        str(folder / "eleven_minutes_titled.flac"),
    )
    for name in ("dev_zero.mp4", "dev_zero.png"):
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to("/dev/zero")
    for name in ("fifo.mp4", "fifo.png"):
        (folder / name).unlink(missing_ok=True)
        os.mkfifo(folder / name)
    (folder / "folder.mp4").mkdir(exist_ok=True)
    (folder / "out_dir.mp4").mkdir(exist_ok=True)
    photo = pillow_heif.from_pillow(Image.fromarray(red_person(96, 128)))
    photo.save(folder / "photo.heic", quality=90)
    png_with_chunk(folder / "huge_iccp.png", b"iCCP", b"sRGB\x00\x00", 64 << 20)
    png_with_chunk(folder / "huge_ztxt.png", b"zTXt", b"Comment\x00\x00", 64 << 20)
    (folder / "ghostscript.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 96 128\nshowpage\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/badinputs/make_corpus.py OUT_DIR", file=sys.stderr)
        return 2
    folder = make_corpus(argv[0])
    for case in [*CASES, *SERVED_CASES]:
        size = f"{(folder / case.file).stat().st_size:>9,} B" if case.file else " " * 11
        print(f"{case.name:28} {case.stage:16} {size}  {case.file or case.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
