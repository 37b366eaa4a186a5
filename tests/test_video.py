import subprocess
import wave

import imageio_ffmpeg
import numpy as np
import pytest

from dynamictrl.video import VideoError, pick_frames, read_video, sample_indices, to_uint8_frames, write_video


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


def write_container(path, frames, fps=10):
    codec = {".webm": "libvpx-vp9", ".gif": "gif"}.get(path.suffix, "libx264")
    pix_fmt = {".gif": "rgb8"}.get(path.suffix, "yuv420p")
    writer = imageio_ffmpeg.write_frames(
        str(path), (frames.shape[2], frames.shape[1]), fps=fps, codec=codec, pix_fmt_out=pix_fmt, macro_block_size=1
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm", ".gif"])
def test_every_container_reads(tmp_path, suffix):
    frames = gradient_frames(6, 32, 48)
    video = read_video(write_container(tmp_path / f"clip{suffix}", frames))
    assert video.num_frames == 6 and video.size == (32, 48)
    assert video.fps == pytest.approx(10, rel=0.01)
    assert np.abs(video.frames.astype(int) - frames).mean() < 40  # gif is palette-quantised


def test_sample_indices_resample_and_start():
    assert sample_indices(30, None, 0, 4) == [0, 1, 2, 3]
    assert sample_indices(30, 15, 0, 4) == [0, 2, 4, 6]
    assert sample_indices(30, 16, 1.0, 3) == [30, 31, 33]
    assert sample_indices(10, 20, 0, 4) == [0, 0, 1, 1]  # upsampling repeats frames


def numbered_video(tmp_path, count=20, fps=10):
    """Frame k is filled with grey level 10*k, so picked frames can be identified."""
    frames = np.stack([np.full((16, 16, 3), 10 * k, dtype=np.uint8) for k in range(count)])
    return write_video(tmp_path / "numbered.mp4", frames, fps=fps)


def frame_numbers(video):
    return [int(round(f.mean() / 10)) for f in video.frames]


def test_pick_frames_at_target_fps_from_start(tmp_path):
    path = numbered_video(tmp_path)
    video = pick_frames(path, count=4, fps=5, start_s=0.5)
    assert frame_numbers(video) == [5, 7, 9, 11] and video.fps == 5
    assert frame_numbers(pick_frames(path, count=3)) == [0, 1, 2]


def test_too_short_video_offers_the_fixes(tmp_path):
    path = numbered_video(tmp_path)
    with pytest.raises(VideoError, match="gives 20 frames but 37 are needed. Lower the frame count.*loop") as error:
        pick_frames(path, count=37, fps=10)
    assert error.value.available_frames == 20


def test_loop_wraps_around(tmp_path):
    video = pick_frames(numbered_video(tmp_path), count=25, fps=10, loop=True)
    assert frame_numbers(video) == list(range(20)) + [0, 1, 2, 3, 4]


def test_audio_only_file_has_no_video_frames(tmp_path):
    audio = tmp_path / "only_audio.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", str(audio)],
        capture_output=True,
        check=True,
    )
    with pytest.raises(VideoError, match="no video track"):
        read_video(audio)


def test_frames_stream_from_a_generator(tmp_path):
    frames = gradient_frames(7)
    path = write_video(tmp_path / "streamed.mp4", (frame for frame in frames), fps=8)
    assert read_video(path).num_frames == 7
    with pytest.raises(VideoError, match="No frames"):
        write_video(tmp_path / "empty.mp4", iter(()))


def test_a_failing_stream_leaves_no_file(tmp_path):
    def frames():
        yield from gradient_frames(3)
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        write_video(tmp_path / "cut.mp4", frames())
    assert list(tmp_path.iterdir()) == []


def test_longest_pose_clip_counts_driving_frames_at_the_fps(tmp_path):
    from dynamictrl.video import longest_pose_clip

    path = numbered_video(tmp_path, count=20, fps=10)
    assert longest_pose_clip(path) == 21  # 20 driving frames + the reference
    assert longest_pose_clip(path, fps=5) == 9  # 10 frames at 5 fps -> 8 + 1
    assert longest_pose_clip(path, fps=10, start_s=1.0) == 9  # 10 frames left
    k = longest_pose_clip(path, fps=5)
    assert pick_frames(path, k - 1, fps=5).num_frames == k - 1  # really available
    with pytest.raises(VideoError, match="past its end"):
        longest_pose_clip(path, start_s=5)


def reference_frames(path):
    """Every frame as imageio-ffmpeg hands it over, stacked: what reading must give."""
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3) for buffer in reader])


def test_decoder_threads_do_not_change_the_frames(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (12, 64, 96, 3), dtype=np.uint8)
    path = write_video(tmp_path / "noise.mp4", frames)
    expected = reference_frames(path)
    for threads in (None, 1, 3):
        video = read_video(path, threads=threads)
        assert np.array_equal(video.frames, expected), threads
        assert np.array_equal(pick_frames(path, 5, fps=8, threads=threads).frames, expected[[0, 2, 4, 6, 8]])
    with pytest.raises(VideoError, match="thread count"):
        read_video(path, threads=0)


def test_frames_land_in_one_array_even_when_the_header_undercounts(tmp_path, monkeypatch):
    import dynamictrl.video as video_module

    path = numbered_video(tmp_path, count=25)
    expected = reference_frames(path)
    for first_bytes in (video_module._FIRST_BUFFER_BYTES, 1):  # 1: room for 16 frames, then it must grow
        monkeypatch.setattr(video_module, "_FIRST_BUFFER_BYTES", first_bytes)
        video = read_video(path)
        assert video.frames.shape == expected.shape and np.array_equal(video.frames, expected)
        assert video.frames.flags.c_contiguous and video.frames.flags.owndata
        assert read_video(path, max_frames=20).num_frames == 20
        assert read_video(path, max_frames=0).num_frames == 1  # as before: the first frame
        looped = pick_frames(path, count=35, fps=10, loop=True)
        assert frame_numbers(looped) == list(range(25)) + list(range(10))
        assert looped.frames.flags.owndata and len(looped.frames) == 35


def test_ffmpeg_starts_without_forking_this_process(tmp_path, monkeypatch):
    """A `preexec_fn` makes Python fork() the whole process (page tables of every loaded
    model copied, then every written page copied again) instead of vfork()ing it."""
    seen = []
    popen_init = subprocess.Popen.__init__

    def recording_init(self, *args, **kwargs):
        seen.append(kwargs.get("preexec_fn"))
        popen_init(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)
    path = write_video(tmp_path / "clip.mp4", gradient_frames(3), fps=8)
    assert read_video(path).num_frames == 3
    assert len(seen) >= 2 and seen == [None] * len(seen)
