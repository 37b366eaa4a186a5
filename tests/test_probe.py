"""dynamictrl.probe: the one safe probe of every media input. The corpus cases
(tests/test_badinputs.py) check the user-facing refusals through the API and the CLI;
these check the layers underneath: each guard holds on its own when the one before it is
taken away, the decode really runs under the allow-lists, numbers come from the stream."""

import subprocess
from dataclasses import replace
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from dynamictrl import probe as media
from dynamictrl.lipsync.audio import AudioError, load_audio
from dynamictrl.video import VideoError, count_frames, iter_frames, probe_video, read_video, write_video

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-y", *args], check=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=s=32x24:r=8", "-frames:v", "8", "-pix_fmt", "yuv420p", str(folder / "clip.mp4")
    )
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=1", str(folder / "tone.wav"))
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{folder / 'clip.mp4'}\n#EXT-X-ENDLIST\n"
    (folder / "list.m3u8").write_text(playlist)
    (folder / "speech_list.m3u8").write_text(playlist.replace("clip.mp4", "tone.wav"))
    return folder


def test_the_demuxer_allow_list_holds_without_the_sniff(files, monkeypatch):
    """Take the by-name refusal away: PyAV's demuxer allow-list still refuses the playlist
    before the HLS demuxer reads a line of it."""
    monkeypatch.setattr(media, "sniff", lambda *args, **kwargs: None)
    with pytest.raises(VideoError, match=r"list.m3u8 is not a video file in a format accepted here: use mp4"):
        probe_video(files / "list.m3u8")
    with pytest.raises(AudioError, match=r"speech_list.m3u8 is not an audio file in a format accepted here"):
        load_audio(files / "speech_list.m3u8")


def test_ffmpeg_decodes_under_the_allow_lists(files):
    """The decoder gets the probe's demuxer and protocol lists: handed a playlist under a
    probe that says "mov", ffmpeg refuses to open it (left to itself it plays clip.mp4)."""
    info = probe_video(files / "clip.mp4")
    forged = replace(info, source=replace(info.source, path=files / "list.m3u8"))
    with pytest.raises(VideoError, match=r"Could not decode list.m3u8"):
        _meta, frames = iter_frames(files / "list.m3u8", info=forged)
        list(frames)
    unguarded = imageio_ffmpeg.read_frames(str(files / "list.m3u8"))
    next(unguarded)
    assert sum(1 for _ in unguarded) == 8  # the attack the allow-lists stop


def test_audio_muxed_into_an_output_is_probed_first(files, tmp_path):
    frames = np.zeros((4, 24, 32, 3), np.uint8)
    with pytest.raises(VideoError, match=r"speech_list.m3u8 is an HLS playlist"):
        write_video(tmp_path / "out.mp4", frames, audio_path=files / "speech_list.m3u8")
    assert not list(tmp_path.iterdir())
    written = write_video(tmp_path / "out.mp4", frames, fps=8, audio_path=files / "tone.wav")
    probed = media.probe(written, media.VIDEO)
    assert probed.has_audio and probed.video.frames == 4 and not list(tmp_path.glob(".*partial*"))


def test_numbers_come_from_the_stream_not_the_log(files, tmp_path):
    spoofed = tmp_path / "titled.mp4"
    ffmpeg(
        "-i",
        str(files / "clip.mp4"),
        "-c",
        "copy",
        "-metadata",
        "title=Duration: 10:00:00.00, start: 0",
        "-metadata:s:v",
        "title=Stream #0:0: Video: h264, yuv420p, 9999x9999, 1000 fps",
        str(spoofed),
    )
    info = probe_video(spoofed)
    assert (info.width, info.height, info.fps, info.duration_s, info.frames) == (32, 24, 8.0, 1.0, 8)
    assert read_video(spoofed).frames.shape == (8, 24, 32, 3)


def test_frames_are_counted_from_packets_as_the_decoder_sees_them(files, tmp_path):
    data = (files / "clip.mp4").read_bytes()
    assert count_frames(probe_video(files / "clip.mp4")) == 8
    faststart = tmp_path / "fast.mp4"
    ffmpeg("-i", str(files / "clip.mp4"), "-c", "copy", "-movflags", "+faststart", str(faststart))
    data = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) - 200])  # the last frame's packet is cut short
    decoded = read_video(cut).num_frames
    assert count_frames(probe_video(cut)) == decoded < 8


def test_odd_local_names_are_files_not_protocols(files, tmp_path):
    """A name ffmpeg would take for a protocol ("concat:...", "a:b") is read as the file it is."""
    for name in ("concat:clip.mp4", "a:b.mp4", "100%done.mp4"):
        path = tmp_path / name
        path.write_bytes((files / "clip.mp4").read_bytes())
        assert read_video(path).num_frames == 8
    with pytest.raises(VideoError, match=r"concat:x.mp4\|y.mp4 is an ffmpeg protocol URL"):
        probe_video("concat:x.mp4|y.mp4")
    with pytest.raises(VideoError, match=r"Video file not found"):
        probe_video(tmp_path / "missing.mp4")


def test_allowed_video_containers_read(tmp_path):
    """Containers of the video allow-list (mp4 is everywhere else) read back."""
    outputs = {
        "clip.mov": [],
        "clip.mkv": [],
        "clip.webm": ["-c:v", "libvpx-vp9"],
        "clip.avi": ["-c:v", "mpeg4"],
        "clip.gif": [],
        "clip.ts": [],
        "clip.flv": ["-c:v", "flv"],
        "clip.ogv": ["-c:v", "libtheora"],
    }
    for name, codec in outputs.items():
        ffmpeg("-f", "lavfi", "-i", "testsrc2=s=32x24:r=8", "-frames:v", "4", *codec, str(tmp_path / name))
        assert read_video(tmp_path / name).num_frames == 4, name
