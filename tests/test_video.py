import subprocess
import wave

import imageio_ffmpeg
import numpy as np
import pytest

from dynamictrl.video import VideoError, read_video, to_uint8_frames, write_video


def gradient_frames(count=9, height=32, width=48):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [np.stack([(x * 5 + 20 * t) % 256, (y * 7) % 256, np.full_like(x, 128)], -1) for t in range(count)]
    ).astype(np.uint8)


def test_mp4_round_trip_keeps_frames_size_and_fps(tmp_path):
    frames = gradient_frames()
    path = write_video(tmp_path / "clip.mp4", frames, fps=16)
    video = read_video(path)
    assert video.num_frames == 9 and video.size == (32, 48) and video.fps == pytest.approx(16)
    assert np.abs(video.frames.astype(int) - frames).mean() < 6  # lossy H.264, close


def test_float_and_pil_frames_are_accepted(tmp_path):
    from PIL import Image

    frames = gradient_frames(3)
    as_float = frames / 255.0
    np.testing.assert_array_equal(to_uint8_frames(as_float), frames)
    np.testing.assert_array_equal(to_uint8_frames([Image.fromarray(f) for f in frames]), frames)


def test_odd_sizes_are_padded_to_even(tmp_path):
    video = read_video(write_video(tmp_path / "odd.mp4", gradient_frames(3, 31, 45)))
    assert video.size == (32, 46)


def test_max_frames_stops_early(tmp_path):
    assert read_video(write_video(tmp_path / "c.mp4", gradient_frames(9)), max_frames=4).num_frames == 4


def test_audio_is_muxed(tmp_path):
    audio = tmp_path / "tone.wav"
    with wave.open(str(audio), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype(np.int16)
        handle.writeframes(tone.tobytes())
    path = write_video(tmp_path / "with_audio.mp4", gradient_frames(16), fps=16, audio_path=audio)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True)
    assert "Audio: aac" in probe.stderr and "Video: h264" in probe.stderr


def test_corrupt_video_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(VideoError, match="re-encode"):
        read_video(path)


def test_missing_video_is_a_clear_error(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        read_video(tmp_path / "nope.mp4")
