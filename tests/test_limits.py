"""`dynamictrl/limits.py` and where each limit is enforced: configuration (defaults, env
vars, Studio(limits=...)), video/image/audio limits judged from headers before decoding,
the decoders' own stops for files whose header is silent, and the settings checks."""

import math
import subprocess
import tracemalloc
from dataclasses import replace

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from dynamictrl.limits import (
    LimitError,
    Limits,
    apply_pil_limit,
    check_prompt,
    env_name,
)
from dynamictrl.settings import GenerateSettings, PipelineOptions, PoseSettings
from dynamictrl.validation import check_generate_settings, check_pose_settings
from tests.badinputs.make_corpus import variable_frame_rate


def ffmpeg(*args):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *args], check=True)


def test_defaults_and_env_vars():
    limits = Limits()
    assert (limits.max_video_seconds, limits.max_video_side, limits.max_audio_seconds) == (600, 4096, 600)
    assert (limits.max_image_pixels, limits.max_prompt_chars, limits.max_upload_mb) == (50_000_000, 2000, 200)
    assert env_name("max_video_seconds") == "DYNAMICTRL_MAX_VIDEO_SECONDS"
    environ = {
        "DYNAMICTRL_MAX_VIDEO_SECONDS": "1200",
        "DYNAMICTRL_MAX_VIDEO_SIDE": " 8192 ",
        "DYNAMICTRL_MAX_FRAMES": "",
    }
    limits = Limits.from_env(environ, max_prompt_chars=500)
    assert (limits.max_video_seconds, limits.max_video_side, limits.max_frames, limits.max_prompt_chars) == (
        1200.0,
        8192,
        Limits().max_frames,
        500,
    )
    with pytest.raises(ValueError, match="DYNAMICTRL_MAX_VIDEO_SIDE='8k' is not an integer"):
        Limits.from_env({"DYNAMICTRL_MAX_VIDEO_SIDE": "8k"})
    for bad in (0, -1, math.nan, True):
        with pytest.raises(ValueError, match="max_audio_seconds must be a positive number"):
            Limits(max_audio_seconds=bad)


def test_studio_takes_limits_from_the_environment_or_the_caller(tiny_weights, monkeypatch):
    from dynamictrl.studio import Studio

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv("DYNAMICTRL_MAX_AUDIO_SECONDS", "30")
    assert Studio(weights_dir=tiny_weights, device="cpu").limits.max_audio_seconds == 30
    studio = Studio(weights_dir=tiny_weights, device="cpu", limits=Limits(max_image_pixels=1_000_000))
    assert studio.limits.max_audio_seconds == 600  # given limits are used as they are
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # PIL's bomb threshold follows


def test_video_limits_are_judged_from_the_header(tmp_path):
    from dynamictrl.video import VideoLimitError, longest_pose_clip, pick_frames, probe_video, read_video

    path = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=30", "-frames:v", "60", "-pix_fmt", "yuv420p", str(path))
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.duration_s, info.estimated_frames) == (320, 240, 30, 2.0, 60)
    assert not info.variable_fps and not info.has_audio
    cases = [
        (Limits(max_video_side=256), r"320x240; videos may be at most 256 px .*DYNAMICTRL_MAX_VIDEO_SIDE"),
        (Limits(max_video_pixels=50_000), r"0.1 megapixels a frame, more than the 0.1 allowed|megapixels a frame"),
        (Limits(max_video_seconds=1.5), r"lasts 2.0 s, longer than the 1.5 s allowed.*DYNAMICTRL_MAX_VIDEO_SECONDS"),
        (Limits(max_video_frames=50), r"about 60 frames \(2.0 s at 30 fps\), more than the 50 allowed"),
    ]
    for limits, message in cases:
        for call in (
            lambda limits=limits: read_video(path, limits=limits),
            lambda limits=limits: pick_frames(path, 5, limits=limits),
            lambda limits=limits: longest_pose_clip(path, limits=limits),
        ):
            with pytest.raises(VideoLimitError, match=message):
                call()
    with pytest.raises(VideoLimitError, match="at most 8 are allowed per job"):
        pick_frames(path, 9, limits=Limits(max_frames=8))
    assert longest_pose_clip(path, limits=Limits(max_frames=21)) == 21  # the whole clip, capped
    assert read_video(path, limits=Limits()).num_frames == 60


def test_a_video_without_a_duration_stops_at_the_frame_limit(tmp_path):
    from dynamictrl.video import VideoLimitError, probe_video, read_video

    path = tmp_path / "streamed.mkv"  # matroska written to a pipe has no duration in its header
    with open(path, "wb") as handle:
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=32x32:r=30",
                "-frames:v",
                "90",
                "-pix_fmt",
                "yuv420p",
                "-f",
                "matroska",
                "pipe:1",
            ],
            stdout=handle,
            check=True,
        )
    assert probe_video(path).duration_s == 0
    with pytest.raises(VideoLimitError, match="more than 50 frames \\(its header did not say how many\\)"):
        read_video(path, limits=Limits(max_video_frames=50))
    assert read_video(path, max_frames=60, limits=Limits(max_video_frames=50)).num_frames == 60  # a bounded read


def test_variable_frame_rate_is_resampled_evenly(tmp_path):
    from dynamictrl.video import longest_pose_clip, pick_frames, probe_video, read_video

    path = variable_frame_rate(tmp_path / "vfr.mp4", "32x32")
    info = probe_video(path)
    assert info.variable_fps and info.fps == 20 and info.duration_s == 2.5
    video = read_video(path)
    # Evenly in time at 20 fps: 1 s of the first grey, 0.5 s of the second, 1 s of the third
    # (left to itself ffmpeg emits the base rate, 60 fps here: 150 frames labelled 20 fps, a 3x
    # slow motion in which every 10 fps frame repeats 6 times).
    levels = np.round(video.frames.reshape(len(video.frames), -1).mean(axis=1) / 40).astype(int)
    assert video.fps == 20 and np.bincount(levels, minlength=6)[[1, 3, 5]].tolist() == [20, 10, 20]
    # The frame count and the reading agree, and pick_frames times the clip by it.
    assert longest_pose_clip(path) == 49 and pick_frames(path, 48).num_frames == 48


def test_images_over_the_pixel_limit_are_refused_unread(tmp_path, monkeypatch):
    from dynamictrl.images import to_rgb

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    path = tmp_path / "big.png"
    Image.new("1", (4000, 3000)).save(path)  # 12 MP of zeros: a few KB on disk
    assert to_rgb(path, max_pixels=12_000_000).shape == (3000, 4000, 3)
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match=r"4000x3000 = 12.0 megapixels, more than the 10 allowed"):
            to_rgb(path, max_pixels=10_000_000)
        with Image.open(path) as lazy, pytest.raises(LimitError, match="4000x3000"):
            to_rgb(lazy, max_pixels=10_000_000)  # a lazily opened PIL image too
        # PIL's own guard, warning above its threshold and refusing above twice it, reads the same.
        for threshold in (10_000_000, 5_000_000):
            apply_pil_limit(Limits(max_image_pixels=threshold))
            with pytest.raises(LimitError, match="declares far more pixels than allowed.*DYNAMICTRL_MAX_IMAGE_PIXELS"):
                to_rgb(path, max_pixels=50_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # nothing near 36 MB of pixels was allocated


def test_audio_over_the_limit_is_refused_before_decoding(tmp_path):
    from dynamictrl.lipsync.audio import AudioTooLongError, load_audio

    path = tmp_path / "three.flac"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=200:duration=3", "-c:a", "flac", str(path))
    assert load_audio(path, max_seconds=3.5).shape == (48000,)
    with pytest.raises(AudioTooLongError, match=r"three.flac lasts 3.0 s; lip-sync takes at most 2.0 s of speech"):
        load_audio(path, max_seconds=2)
    assert load_audio(path, max_seconds=math.inf).shape == (48000,)
    # No duration in the header: the decoder stops one second past the limit.
    streamed = tmp_path / "streamed.mka"
    with open(streamed, "wb") as handle:
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=200:duration=30",
                "-c:a",
                "flac",
                "-f",
                "matroska",
                "pipe:1",
            ],
            stdout=handle,
            check=True,
        )
    with pytest.raises(AudioTooLongError, match="lasts more than 2.0 s \\(its header did not say how long\\)"):
        load_audio(streamed, max_seconds=2)


def test_settings_checks():
    limits = Limits()
    good = GenerateSettings(prompt="a dancer", num_frames=9, width=48, height=64)
    check_generate_settings(good, limits)
    refused = {
        "prompt": (b"bytes", "bytes, not text"),
        "negative_prompt": ("x" * 2001, "negative prompt is 2,001 characters"),
        "num_frames": (9.0, "num_frames must be a whole number"),
        "steps": (0, r"steps must be 1\.\.200"),
        "guidance": (math.inf, "guidance must be a finite number"),
        "seed": (1.5, "seed must be a whole number"),
        "fps": (0.0, r"fps must be 1\.\.120"),
        "window_frames": (-1, "window_frames must be"),
        "overlap": (True, "overlap must be a whole number"),
        "dtype": ("bf8", "dtype must be one of auto, bf16"),
    }
    for name, (value, message) in refused.items():
        with pytest.raises(ValueError, match=message):
            check_generate_settings(replace(good, **{name: value}), limits)
    # The memory options are checked when they are made, and again with the job (they may be changed since).
    with pytest.raises(ValueError, match="first_block_cache must be a finite"):
        PipelineOptions(first_block_cache=math.nan)
    changed = replace(good, memory=PipelineOptions())
    changed.memory.first_block_cache = 2.0
    with pytest.raises(ValueError, match=r"first_block_cache must be 0\.\.1, got 2"):
        check_generate_settings(changed, limits)
    with pytest.raises(LimitError, match="4097 frames asked for; at most 2049"):
        check_generate_settings(replace(good, num_frames=4097), limits)
    check_generate_settings(replace(good, num_frames=4097, seed=2**64 - 1, guidance=0.0), Limits(max_frames=4097))

    check_pose_settings(PoseSettings(fps=None), limits)
    check_pose_settings(PoseSettings(fps=0), limits)  # 0: every frame, as None
    for overrides, message in [
        ({"start_s": -1.0}, "start time"),
        ({"start_s": 601.0}, "start time"),
        ({"fps": math.nan}, "fps must be a finite"),
        ({"detect_every": 0}, "detect_every"),
        ({"width": 48.5}, "width must be a whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_pose_settings(PoseSettings(**overrides), limits)


def test_prompt_checks_name_the_problem():
    limits = Limits(max_prompt_chars=10)
    check_prompt("héllo ✓", limits)
    with pytest.raises(LimitError, match="11 characters, more than the 10 allowed.*DYNAMICTRL_MAX_PROMPT_CHARS"):
        check_prompt("x" * 11, limits)
    with pytest.raises(ValueError, match="must be text"):
        check_prompt(None, limits)


def test_prompt_over_the_t5_window_is_refused(tiny_weights):
    from dynamictrl.limits import check_prompt_tokens
    from dynamictrl.studio import Studio

    tokenizer = Studio(weights_dir=tiny_weights, device="cpu").t5_tokenizer()
    assert check_prompt_tokens("a person dancing", tokenizer) <= 10
    with pytest.raises(ValueError, match="T5 tokens; the text encoder reads only 226, so everything after"):
        check_prompt_tokens("a person dancing " * 200, tokenizer)
