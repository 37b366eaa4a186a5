"""Issue #11: every case of the bad-input corpus (`tests/badinputs/make_corpus.py`) through
the public Python API (`Studio` on tiny models), and a subset through the web app's
endpoints (`app.py --tiny` via gradio_client).

Each case must end in one of two ways: a clear error (a ValueError subclass, which the app
shows as a one-line message; the message names the problem and the fix, checked by a
fragment; no traceback) or a correct result (checked: an EXIF-rotated photo comes upright,
a VFR clip is resampled evenly, ...). Every case runs under a hang guard: a generous
wall-clock bound that fails the case if it is still running, not a performance
assertion (the tiny models finish each case in seconds). After every case no ffmpeg
process may be left running.

`BADINPUTS_REPORT=tests/RELIABILITY.md python -m pytest tests/test_badinputs.py tests/test_serve.py`
rewrites the report from the run's actual outcomes, times and memory (the playlist cases
through the Ray gateway are run by tests/test_serve.py, which adds its rows to `RESULTS`;
the report is written when the session ends, so it holds them when both files ran).
"""

import os
import re
import signal
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from dynamictrl.images import ImageError
from dynamictrl.limits import LimitError
from dynamictrl.lipsync.audio import AudioError, AudioTooLongError
from dynamictrl.pose.sequence import NoPersonError
from dynamictrl.studio import GenerateSettings, OutputError, PoseSettings, Studio, load_image
from dynamictrl.video import VideoError, VideoLimitError, VideoTooShortError, read_video
from tests.badinputs.make_corpus import CASES, PROBE_CASES, SERVED_CASES, make_corpus

pytestmark = pytest.mark.slow  # 60 bad inputs through the API and the app

HANG_GUARD_S = 60  # a hang guard, not a performance bound: the slowest case takes a few seconds
SETTINGS = GenerateSettings(prompt="a person dancing", num_frames=9, width=48, height=64, steps=2, seed=7)
POSE = PoseSettings(num_frames=9, width=48, height=64)
CASES_BY_NAME = {case.name: case for case in CASES}
# Reference-image cases about who is in the picture: they go through pose extraction.
PERSON_CASES = {"no_person_image", "several_people"}
RESULTS: list[dict] = []  # one row per case run, for the report
MEMORY: dict = {}  # RSS around the repeated-faults run, for the report
FAULT_ROUNDS = 2


class HangGuardExpired(BaseException):
    """BaseException: no `except Exception` (or `except OSError`) in the code under test may swallow it."""


@contextmanager
def hang_guard(seconds: float):
    def expire(signum, frame):
        raise HangGuardExpired(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ffmpeg_processes() -> list:
    """ffmpeg children of this process still alive (zombies reaped by nobody count as leaks
    too). Direct children only: the app server's own ffmpeg runs are not ours to judge."""
    found = []
    for child in psutil.Process().children(recursive=False):
        try:
            if "ffmpeg" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("badinputs"))


@pytest.fixture(scope="module")
def studio(lipsync_weights, tmp_path_factory):
    return Studio(weights_dir=lipsync_weights, device="cpu", cache_dir=tmp_path_factory.mktemp("avatars"))


@pytest.fixture(scope="session", autouse=True)
def report():
    # Session scope: written after every module ran (tests/test_serve.py adds the Ray rows).
    yield
    target = os.environ.get("BADINPUTS_REPORT")
    if target and RESULTS:
        Path(target).write_text(render_report(RESULTS))


# ---------------------------------------------------------------------------- running a case


def prompt_from(case, corpus: Path):
    raw = (corpus / case.file).read_bytes()
    if case.value["as"] == "bytes":
        return raw
    return raw.decode("utf-8", errors="surrogateescape" if case.value["as"] == "surrogateescape" else "strict")


def run_case(case, corpus: Path, studio: Studio, out: Path):
    """The case's input through the API call a user of that stage makes."""
    reference, pose, dance = corpus / "reference.png", corpus / "pose.mp4", corpus / "dance.mp4"
    path = corpus / case.file if case.file else value_path(case, corpus)
    if case.stage == "output":
        return run_output_case(case, corpus, studio)
    if case.stage == "driving video":
        return studio.extract_poses(reference, path, POSE, out_path=out / "pose.mp4")
    if case.stage == "pose video":
        return studio.generate(reference, out / "out.mp4", SETTINGS, pose_video_path=path)
    if case.stage == "reference image":
        if case.name in PERSON_CASES:
            return studio.extract_poses(path, dance, POSE, out_path=out / "pose.mp4")
        return studio.generate(path, out / "out.mp4", SETTINGS, pose_video_path=pose)
    if case.stage == "speech audio":
        return studio.lipsync(corpus / "talk.mp4", path, out / "talk_out.mp4")
    if case.stage == "lip-sync video":
        return studio.lipsync(path, corpus / "speech.wav", out / "talk_out.mp4")
    if case.stage == "prompt":
        return studio.generate(
            reference, out / "out.mp4", replace(SETTINGS, prompt=prompt_from(case, corpus)), pose_video_path=pose
        )
    if case.stage == "settings":
        if "pose" in case.value:
            return studio.extract_poses(
                reference, dance, replace(POSE, **case.value["pose"]), out_path=out / "pose.mp4"
            )
        return studio.generate(reference, out / "out.mp4", replace(SETTINGS, **case.value), pose_video_path=pose)
    raise AssertionError(f"unknown stage {case.stage!r}")


def value_path(case, corpus: Path):
    """A case's input given as a path that is not a corpus file (a URL, a pattern)."""
    text = case.value.get("path")
    if text is None:
        return None
    return text if "://" in text else corpus / text


def output_target(case, corpus: Path) -> Path:
    out = Path(case.value["out"])
    return out if out.is_absolute() else corpus / out


def run_output_case(case, corpus: Path, studio: Studio):
    target = output_target(case, corpus)
    call = case.value["call"]
    if call == "generate":
        return studio.generate(corpus / "reference.png", target, SETTINGS, pose_video_path=corpus / "pose.mp4")
    if call == "lipsync":
        return studio.lipsync(corpus / "talk.mp4", corpus / "speech.wav", target)
    if call == "pose":
        return studio.extract_poses(corpus / "reference.png", corpus / "dance.mp4", POSE, out_path=target)
    raise AssertionError(call)


# ---------------------------------------------------------------------------- what each case must give


def error(kind: type, pattern: str):
    return ("error", kind, pattern)


def ok(check):
    return ("ok", check)


def pose_frames(count: int):
    def check(result, case, corpus):
        assert result.sequence.num_frames == count and result.pose_video_path.stat().st_size > 0
        assert read_video(result.pose_video_path).num_frames == count
        return f"{count} pose frames"

    return check


def generated(check_image=None):
    def check(result, case, corpus):
        assert result.num_frames == 9 and result.video_path.is_file() and result.manifest_path.is_file()
        note = check_image(load_image(corpus / case.file)) if check_image else ""
        return "generated 9 frames" + (f"; {note}" if note else "")

    return check


def exif_upright(image):
    array = np.asarray(image)
    assert image.size == (64, 96)  # stored 96x64 sideways, orientation 6
    assert array[:40].mean() > 200 and array[-40:].mean() < 50  # the white half is now on top
    return "read upright as 64x96"


def cmyk_as_rgb(image):
    red = np.asarray(image)[4, 4].astype(int)
    assert image.mode == "RGB" and red[0] > 200 and red[1] < 60 and red[2] < 60
    return "CMYK converted, red stays red"


def sixteen_bit_scaled(image):
    values = np.asarray(image)[..., 0]
    assert values.min() == 0 and values.max() == 255  # scaled from 0..65535, not clipped
    return "0..65535 scaled to 0..255"


def transparent_black(image):
    array = np.asarray(image)
    assert (array[64:] == 0).all() and tuple(array[0, 0]) == (255, 0, 0)
    return "transparent half black"


def palette_transparent_black(image):
    array = np.asarray(image)
    assert tuple(array[-1, -1]) == (0, 0, 0) and tuple(array[0, 0]) == (255, 0, 0)
    return "transparent colour black"


def first_gif_frame(image):
    assert tuple(np.asarray(image)[-1, -1]) == (0, 160, 0)  # frame 0's background; frames 1, 2 differ
    return "first frame used"


def vfr_even(result, case, corpus):
    video = read_video(corpus / case.file)
    # 1 s at 10 fps + 0.5 s at 60 fps + 1 s at 10 fps, read at the 20 fps average: 2.5 s x 20.
    assert video.fps == 20 and video.num_frames == 50
    return pose_frames(9)(result, case, corpus) + f"; read as {video.num_frames} frames at {video.fps:g} fps"


def rotated_upright(result, case, corpus):
    video = read_video(corpus / case.file)
    assert video.size == (64, 48)  # (height, width): coded 64x48 landscape, shown portrait
    return pose_frames(9)(result, case, corpus) + "; frames upright 48x64"


def several_people(result, case, corpus):
    assert len(result.sequence.reference_pose.people) >= 2
    return (
        pose_frames(9)(result, case, corpus) + f"; {len(result.sequence.reference_pose.people)} people in the reference"
    )


def emoji_prompt(result, case, corpus):
    import json

    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["prompt_used"] == (corpus / case.file).read_text().strip()
    return generated()(result, case, corpus) + "; prompt recorded as given"


DECODE = r"Could not decode .*re-encode it"
NO_FRAMES = r"has a video track but no frames"
SIDE_8K = r"7680x4320; videos may be at most 4096 px .*scale=.*DYNAMICTRL_MAX_VIDEO_SIDE"

EXPECTED = {
    "truncated_mp4": error(VideoError, DECODE),
    "truncated_mp4_playable": ok(pose_frames(9)),
    "cut_after_header": error(VideoError, NO_FRAMES),
    "corrupt_mp4": ok(pose_frames(9)),
    "garbage_mp4": error(VideoError, DECODE),
    "empty_mp4": error(VideoError, DECODE),
    "zero_frame_video": error(VideoError, NO_FRAMES),
    "one_frame_video": error(VideoTooShortError, r"gives 1 frames but 8 are needed.*use --loop or a longer video"),
    "video_8k": error(VideoLimitError, SIDE_8K),
    "video_300fps": ok(pose_frames(9)),
    "video_vfr": ok(vfr_even),
    "video_rotated": ok(rotated_upright),
    "audio_renamed_mp4": error(VideoError, r"no video track \(is it an audio file\?\)"),
    "audio_with_cover_mp4": error(VideoError, r"no video track \(is it an audio file\?\)"),
    "video_11_minutes": error(
        VideoLimitError,
        r"lasts 11 min 00.0 s, longer than the 10 min 00.0 s allowed.*-t 60"
        r".*DYNAMICTRL_MAX_VIDEO_SECONDS",
    ),
    "video_no_person": error(ValueError, r"No person detected in the driving video.*clearly visible"),
    "person_cut_off": ok(pose_frames(9)),
    "pose_video_8k": error(VideoLimitError, SIDE_8K),
    "pose_video_zero_frames": error(VideoError, NO_FRAMES),
    "pose_video_one_frame": error(ValueError, r"pose video has 1 frames, fewer than the 9 .*use --frames 1"),
    "exif_rotated_jpeg": ok(generated(exif_upright)),
    "cmyk_jpeg": ok(generated(cmyk_as_rgb)),
    "png_16_bit": ok(generated(sixteen_bit_scaled)),
    "png_rgba": ok(generated(transparent_black)),
    "png_palette_transparent": ok(generated(palette_transparent_black)),
    "image_1x1": error(ValueError, r"1x1 \(width x height\); images must be 16 to 8192 pixels .*Resize it"),
    "png_bomb_huge": error(
        LimitError,
        r"bomb_60000.png declares far more pixels than allowed.*decompression bomb"
        r".*DYNAMICTRL_MAX_IMAGE_PIXELS",
    ),
    "png_bomb_moderate": error(
        LimitError,
        r"bomb_8000.png .*(more than the 50 allowed|far more pixels than allowed)"
        r".*DYNAMICTRL_MAX_IMAGE_PIXELS",
    ),
    "animated_gif": ok(generated(first_gif_frame)),
    "truncated_png": error(
        ValueError, r"truncated.png \(image file is truncated\): the file is incomplete, corrupt.*Upload it again"
    ),
    "text_as_png": error(ValueError, r"Could not read the image text.png .*not an image"),
    "no_person_image": error(NoPersonError, r"[Nn]o person"),
    "several_people": ok(several_people),
    "silent_audio": error(AudioError, r"silent .*use a clip with speech"),
    "zero_second_audio": error(AudioError, r"no audio samples \(0 s long\)"),
    "two_hour_audio": error(
        AudioTooLongError,
        r"two_hours.flac lasts 2 h 00 min; lip-sync takes at most 10 min 00 s"
        r".*-t 60.*DYNAMICTRL_MAX_AUDIO_SECONDS",
    ),
    "nan_audio": error(AudioError, r"NaN or infinite samples: re-export"),
    "text_as_wav": error(AudioError, r"could not be decoded.*Accepted: wav"),
    "video_without_sound": error(AudioError, r"no audio stream"),
    "lipsync_video_8k": error(VideoLimitError, SIDE_8K),
    "lipsync_zero_frames": error(VideoError, NO_FRAMES),
    "lipsync_audio_as_video": error(VideoError, r"no video track"),
    "prompt_bytes_not_utf8": error(ValueError, r"prompt is bytes, not text: decode it first"),
    "prompt_undecodable_text": error(
        ValueError, r"not valid UTF-8 text \(character 31, '\\udce9'\).*Save the text as UTF-8"
    ),
    "prompt_10000_chars": error(
        LimitError, r"10,000 characters, more than the 2,000 allowed.*DYNAMICTRL_MAX_PROMPT_CHARS"
    ),
    "prompt_over_t5_window": error(ValueError, r"T5 tokens; the text encoder reads only 226.*Shorten it"),
    "prompt_emoji_and_controls": ok(emoji_prompt),
    "steps_negative": error(ValueError, r"steps must be 1\.\.200, got -1"),
    "guidance_nan": error(ValueError, r"guidance must be a finite number, got nan"),
    "guidance_huge": error(ValueError, r"guidance must be 0\.\.20, got 1e\+30"),
    "seed_huge": error(ValueError, r"seed must be -9223372036854775808\.\.18446744073709551615"),
    "fps_nan": error(ValueError, r"fps must be a finite number, got nan"),
    "frames_huge": error(LimitError, r"1000000001 frames asked for; at most 2049 .*DYNAMICTRL_MAX_FRAMES"),
    "frames_negative": error(ValueError, r"4k\+1 .*got -3"),
    "frames_not_4k_plus_1": error(ValueError, r"4k\+1 .*got 10: use 9 or 13"),
    "size_not_multiple_of_16": error(ValueError, r"multiples of 16, got 50x64"),
    "width_float_nan": error(ValueError, r"width must be a whole number, got nan"),
    "pose_start_nan": error(ValueError, r"start time \(start_s\) must be a finite number"),
    "pose_fps_negative": error(ValueError, r"fps must be 0\.\.120, got -5"),
    "pose_frames_huge": error(LimitError, r"100001 pose frames asked for; at most 2049"),
}


# ---------------------------------------------------------------------------- issue 15: the probe's cases
def heic_read(image):
    array = np.asarray(image)
    assert image.size == (96, 128) and tuple(array[4, 4]) == pytest.approx((255, 0, 0), abs=6)
    return "HEIC read as 96x128, red stays red"


PLAYLIST_VIDEO = (
    r"playlist.m3u8 is an HLS playlist \(\.m3u8\), not a video file: lists that name other files are refused"
)
CHUNK_BOMB = r"holds a compressed metadata chunk .*decompression bomb.*re-save it as PNG or JPEG"
PROBE_EXPECTED = {
    "hls_playlist_driving": error(VideoError, PLAYLIST_VIDEO),
    "hls_playlist_pose": error(VideoError, PLAYLIST_VIDEO),
    "hls_playlist_speech": error(AudioError, r"playlist.m3u8 is an HLS playlist \(\.m3u8\), not an audio file"),
    "hls_playlist_lipsync": error(VideoError, PLAYLIST_VIDEO),
    "hls_playlist_renamed_mp4": error(
        VideoError, r"playlist_renamed.mp4 is an HLS playlist \(\.m3u8\), not a video file"
    ),
    "ffconcat_list": error(VideoError, r"list.ffconcat is an ffconcat list, not a video file"),
    "ffconcat_list_speech": error(AudioError, r"list.ffconcat is an ffconcat list, not an audio file"),
    "image_sequence_pattern": error(
        VideoError,
        r"seq_%03d.png is an image-sequence pattern, not a video file.*"
        r"ffmpeg -framerate 16 -i seq_%03d.png",
    ),
    "image_as_video": error(VideoError, r"reference.png is an image \(PNG\), not a video"),
    "network_url": error(VideoError, r"http://127.0.0.1:9/dance.mp4 is a network URL, not a video file: download it"),
    "spoofed_duration_video": error(
        VideoLimitError,
        r"eleven_minutes_titled.mp4 lasts 11 min 00.0 s, longer than the "
        r"10 min 00.0 s allowed",
    ),
    "spoofed_duration_audio": error(
        AudioTooLongError,
        r"eleven_minutes_titled.flac lasts 11 min 00 s; lip-sync takes "
        r"at most 10 min 00 s",
    ),
    "dev_zero_video": error(VideoError, r"^dev_zero.mp4 is a device, not a video file: give the path of a video file"),
    "dev_zero_speech": error(AudioError, r"^dev_zero.mp4 is a device, not an audio file"),
    "dev_zero_image": error(ImageError, r"^dev_zero.png is a device, not an image file"),
    "fifo_video": error(VideoError, r"^fifo.mp4 is a named pipe \(FIFO\), not a video file"),
    "fifo_image": error(ImageError, r"^fifo.png is a named pipe \(FIFO\), not an image file"),
    "folder_as_video": error(VideoError, r"^folder.mp4 is a folder, not a video file"),
    "folder_as_speech": error(AudioError, r"^folder.mp4 is a folder, not an audio file"),
    "heic_photo": ok(generated(heic_read)),
    "png_huge_iccp": error(ImageError, "huge_iccp.png " + CHUNK_BOMB),
    "png_huge_ztxt": error(ImageError, "huge_ztxt.png " + CHUNK_BOMB),
    "eps_as_image": error(
        ImageError, r"Could not read the image ghostscript.eps \(not an image in a format accepted here"
    ),
    "output_is_folder": error(OutputError, r"out_dir.mp4 is a folder: give a file name inside it"),
    "output_folder_unwritable": error(OutputError, r"dynamictrl-out.mp4: the folder /proc is not writable"),
    "pose_output_is_folder": error(OutputError, r"out_dir.mp4 is a folder: give a file name inside it"),
}
EXPECTED.update(PROBE_EXPECTED)


def test_every_case_has_an_expectation():
    assert set(EXPECTED) == set(CASES_BY_NAME) and len(CASES) >= 30


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_bad_input_through_the_api(name, corpus, studio, tmp_path):
    case = CASES_BY_NAME[name]
    expected = EXPECTED[name]
    row = {"case": name, "stage": case.stage, "what": case.what, "expected": case.expected, "via": "API"}
    RESULTS.append(row)
    started = time.perf_counter()
    try:
        with hang_guard(HANG_GUARD_S):
            if expected[0] == "error":
                _, kind, pattern = expected
                with pytest.raises(Exception) as raised:
                    run_case(case, corpus, studio, tmp_path)
                message = str(raised.value)
                row["outcome"] = f"{type(raised.value).__name__}: {message}"
                assert isinstance(raised.value, kind), (
                    f"{type(raised.value).__name__} is not a {kind.__name__}: {message}"
                )
                # A ValueError is what the app shows as a user's error, one line, no traceback.
                assert isinstance(raised.value, ValueError) and "Traceback" not in message and "\n" not in message
                assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
            else:
                result = run_case(case, corpus, studio, tmp_path)
                try:
                    row["outcome"] = "ok: " + expected[1](result, case, corpus)
                except AssertionError as wrong:
                    row["outcome"] = f"wrong result: {str(wrong).splitlines()[0]}"
                    raise
    finally:
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["rss_mb"] = round(rss_mb())
        deadline = time.monotonic() + 5
        while ffmpeg_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        row["leaked_ffmpeg"] = len(ffmpeg_processes())
    row["passed"] = True
    assert row["leaked_ffmpeg"] == 0, "an ffmpeg process outlived the call"
    if expected[0] == "error":
        # Nothing half-written is left where the result would have gone.
        assert not [p for p in tmp_path.iterdir() if p.suffix in (".mp4", ".json")], list(tmp_path.iterdir())


def test_repeated_faults_leave_memory_flat(corpus, studio, tmp_path):
    """Every error case again, FAULT_ROUNDS times, after the run above loaded every model: what a
    failed call leaves behind (buffers, decoder processes, open files) would pile up here."""
    import gc

    errors = [case for case in CASES if EXPECTED[case.name][0] == "error"]
    process = psutil.Process()
    gc.collect()
    before, files_before = rss_mb(), len(process.open_files())
    with hang_guard(HANG_GUARD_S * 2):
        for round_index in range(FAULT_ROUNDS):
            for case in errors:
                out = tmp_path / f"{round_index}_{case.name}"
                out.mkdir()
                with pytest.raises(ValueError):
                    run_case(case, corpus, studio, out)
    gc.collect()
    after, files_after = rss_mb(), len(process.open_files())
    MEMORY.update(
        calls=FAULT_ROUNDS * len(errors),
        before=round(before),
        after=round(after),
        files_before=files_before,
        files_after=files_after,
        ffmpeg=len(ffmpeg_processes()),
    )
    assert files_after <= files_before and MEMORY["ffmpeg"] == 0
    # A leak guard, not a performance bound: a leak of even one decoded 8K frame per call (100 MB) trips it.
    assert after - before < 100, MEMORY


# ---------------------------------------------------------------------------- the same through the app

TINY = "tiny 64x80"


@pytest.fixture(scope="module")
def client(tiny_app):
    from gradio_client import Client

    return Client(tiny_app.url, verbose=False)


def app_args(endpoint: str, corpus: Path, file: str | None, prompt: str = "a person dancing", steps: int = 2):
    from gradio_client import handle_file

    def upload(name):
        return handle_file(str(corpus / name))

    size = dict(size_preset=TINY, width=768, height=1360)
    if endpoint == "/crop_preview":
        return dict(reference=upload(file), **size)
    motion = dict(
        reference=upload("reference.png"),
        driving=upload(file or "dance.mp4"),
        is_pose_video=False,
        **size,
        start=0,
        frames=9,
        fps=16,
        retarget="global",
    )
    if endpoint == "/extract_poses":
        return motion
    if endpoint == "/generate":
        return dict(
            motion,
            mask_mode="none",
            prompt=prompt,
            negative_prompt="",
            steps=steps,
            guidance=3.0,
            seed=7,
            speed="tiny (2 steps)",
            offload="auto",
        )
    lipsync = dict(bbox_shift=0, extra_margin=10, parsing_mode="jaw", left_cheek=90, right_cheek=90)
    if endpoint == "/lipsync_audio":
        return dict(lipsync_video=upload("talk.mp4"), speech=upload(file), **lipsync)
    if endpoint == "/lipsync_video":
        return dict(lipsync_video=upload(file), speech=upload("speech.wav"), **lipsync)
    raise AssertionError(endpoint)


# (case, endpoint, file, options, None for a result or a fragment the one-line message must hold)
APP_CASES = [
    # The upload widgets hand our handlers the file unopened (ui/uploads.py): the bomb is
    # refused by dynamictrl.images from its header, in one line that names the file.
    ("png_bomb_huge", "/crop_preview", "bomb_60000.png", {}, r"bomb_60000\.png.*(?:decompression bomb|megapixels)"),
    ("text_as_png", "/crop_preview", "text.png", {}, r"Could not read the image text\.png"),
    ("image_1x1", "/crop_preview", "one_pixel.png", {}, r"16 to 8192"),
    ("cmyk_jpeg", "/crop_preview", "cmyk.jpg", {}, None),
    ("png_rgba", "/crop_preview", "rgba.png", {}, None),
    ("png_16_bit", "/crop_preview", "gray16.png", {}, None),
    ("exif_rotated_jpeg", "/crop_preview", "exif_rotated.jpg", {}, None),
    ("video_8k", "/extract_poses", "8k.mp4", {}, r"at most 4096 px"),
    # The API's message names the CLI's --frames/--loop; the page's names its own fields.
    (
        "one_frame_video",
        "/extract_poses",
        "one_frame.mp4",
        {},
        r"lower the fps or start earlier\. With this video use "
        r"a longer video",
    ),
    ("zero_frame_video", "/extract_poses", "zero_frames.mp4", {}, r"no frames|no video"),
    ("audio_renamed_mp4", "/extract_poses", "audio_only.mp4", {}, r"no video track"),
    ("video_vfr", "/extract_poses", "vfr.mp4", {}, None),
    (
        "prompt_10000_chars",
        "/generate",
        None,
        {"prompt": ("a dancer " * 1200)[:10_000]},
        r"10,000 characters, more than",
    ),
    # The page's number field (minimum 1) answers before the handler's own check.
    ("steps_negative", "/generate", None, {"steps": -1}, r"less than minimum value 1|steps must be 1\.\.200"),
    ("two_hour_audio", "/lipsync_audio", "two_hours.flac", {}, r"2 h 00 min.*at most 10 min"),
    ("zero_second_audio", "/lipsync_audio", "zero_seconds.wav", {}, r"0 s long|no audio"),
    ("lipsync_video_8k", "/lipsync_video", "8k.mp4", {}, r"at most 4096 px"),
]

# App cases that hit a known app-layer bug are held as strict xfails (reason in the dict).
KNOWN_APP_ISSUES: dict[str, str] = {}  # none open: add a case here (with the reason) to hold it as a strict xfail


def _app_param(case):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_APP_ISSUES[case[0]])] if case[0] in KNOWN_APP_ISSUES else []
    return pytest.param(*case, marks=marks, id=case[0] + case[1])


@pytest.mark.parametrize("name,endpoint,file,options,pattern", [_app_param(case) for case in APP_CASES])
def test_bad_input_through_the_app(name, endpoint, file, options, pattern, client, corpus):
    from gradio_client.exceptions import AppError

    case = CASES_BY_NAME[name]
    api_name = "/lipsync" if endpoint.startswith("/lipsync") else endpoint
    row = {
        "case": name,
        "stage": case.stage,
        "what": case.what,
        "expected": case.expected,
        "via": f"app {api_name}",
        "known_issue": KNOWN_APP_ISSUES.get(name),
    }
    RESULTS.append(row)
    started = time.perf_counter()
    try:
        with hang_guard(HANG_GUARD_S):
            args = app_args(endpoint, corpus, file, **options)
            if pattern is None:
                result = client.predict(**args, api_name=api_name)
                try:
                    row["outcome"] = "ok: " + check_app_result(name, result)
                except AssertionError as wrong:
                    row["outcome"] = f"wrong result: {str(wrong).splitlines()[0]}"
                    raise
            else:
                with pytest.raises(AppError) as raised:
                    client.predict(**args, api_name=api_name)
                message = str(raised.value)
                row["outcome"] = f"message: {message}"
                assert "Traceback" not in message
                assert "\n" not in message.strip(), message
                assert "Unexpected error" not in message  # an error the handlers did not recognise as the user's
                # gradio's "Could not preprocess ..." and any server temp path stay out of the message.
                assert "preprocess" not in message and "/tmp/" not in message and "dynamictrl-app-" not in message
                assert not re.search(r"--(frames|loop|fps|start)\b", message), message  # the page's terms
                assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    finally:
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["rss_mb"] = None
    row["passed"] = True


def check_app_result(name: str, result) -> str:
    if name == "cmyk_jpeg":
        crop, info = result
        pixels = np.asarray(Image.open(crop).convert("RGB"))
        assert pixels.shape == (80, 64, 3) and "64x80" in info
        return "64x80 crop"
    if name == "exif_rotated_jpeg":
        crop, info = result
        pixels = np.asarray(Image.open(crop).convert("RGB")).astype(int)
        assert pixels.shape == (80, 64, 3) and pixels[:30].mean() > 200 and pixels[-30:].mean() < 50
        return "64x80 crop, upright"
    if name == "png_rgba":
        crop, _info = result
        pixels = np.asarray(Image.open(crop).convert("RGB"))
        # The preview comes back lossy-encoded: "black" allows codec noise, the hidden colour does not pass.
        assert pixels[-20:].max() <= 12, f"transparent half shows {pixels[-20:].max()}, not black"
        return "transparent half black"
    if name == "png_16_bit":
        crop, _info = result
        values = np.asarray(Image.open(crop).convert("L")).astype(float)
        assert 100 < values.mean() < 155, f"mean {values.mean():.0f}: the 16-bit ramp was clipped, not scaled"
        return "16-bit ramp scaled"
    if name == "video_vfr":
        pose_video, _overlay, info = result
        assert "9 pose frames" in info and Path(pose_video).stat().st_size > 0
        return info.split(";")[0]
    raise AssertionError(name)


# ---------------------------------------------------------------------------- issue 15: the probe's cases through the CLI


def cli_args(case, corpus: Path, out: Path, weights: Path) -> list[str]:
    """The `python -m dynamictrl ...` command a CLI user of the case's stage types."""
    path = str(corpus / case.file if case.file else value_path(case, corpus))
    size = ["--frames", "9", "--width", "48", "--height", "64"]
    common = ["--weights-dir", str(weights), "--device", "cpu"]
    generate = ["generate", "--prompt", "a person dancing", "--steps", "2", *size, *common]
    lipsync = ["lipsync", "--cache-dir", str(out / "cache"), *common]
    stage = case.stage
    if stage == "output":
        target = str(output_target(case, corpus))
        stage, path = (
            {"generate": "pose video", "lipsync": "lip-sync video", "pose": "driving video"}[case.value["call"]],
            None,
        )
        out_file = target
    else:
        out_file = str(out / ("talk_out.mp4" if "audio" in stage or "lip-sync" in stage else "out.mp4"))
    if stage == "driving video":
        return [
            "pose",
            "--image",
            str(corpus / "reference.png"),
            "--video",
            path or str(corpus / "dance.mp4"),
            "--out",
            out_file,
            *size,
            *common,
        ]
    if stage == "pose video":
        return [
            *generate,
            "--image",
            str(corpus / "reference.png"),
            "--pose-video",
            path or str(corpus / "pose.mp4"),
            "--out",
            out_file,
        ]
    if stage == "reference image":
        return [*generate, "--image", path, "--pose-video", str(corpus / "pose.mp4"), "--out", out_file]
    if stage == "speech audio":
        return [*lipsync, "--video", str(corpus / "talk.mp4"), "--audio", path, "--out", out_file]
    if stage == "lip-sync video":
        return [
            *lipsync,
            "--video",
            path or str(corpus / "talk.mp4"),
            "--audio",
            str(corpus / "speech.wav"),
            "--out",
            out_file,
        ]
    raise AssertionError(stage)


@pytest.mark.parametrize("name", [case.name for case in PROBE_CASES])
def test_probe_case_through_the_cli(name, corpus, lipsync_weights, tmp_path, capsys):
    """The CLI (its `main`, in this process: an interpreter per case would cost seconds each)
    answers a refused input with exit status 2 and one line, `error: ...`, and writes nothing."""
    from dynamictrl import cli

    case = CASES_BY_NAME[name]
    expected = EXPECTED[name]
    row = {"case": name, "stage": case.stage, "what": case.what, "expected": case.expected, "via": "CLI"}
    RESULTS.append(row)
    out = tmp_path / "out"
    out.mkdir()
    started = time.perf_counter()
    try:
        with hang_guard(HANG_GUARD_S):
            status = cli.main(cli_args(case, corpus, out, lipsync_weights))
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        if expected[0] == "error":
            row["outcome"] = f"exit {status}: " + " / ".join(lines)
            assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
            assert "Traceback" not in captured.err and re.search(expected[2], lines[0][len("error: ") :]), lines
            written = [p.name for p in out.rglob("*") if p.suffix in (".mp4", ".json") or ".partial" in p.name]
            assert not written, written
        else:
            row["outcome"] = f"exit {status}: {captured.out.strip()}"
            assert status == 0 and (out / "out.mp4").is_file() and (out / "out.json").is_file(), captured.err
            assert read_video(out / "out.mp4").num_frames == 9
    finally:
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["rss_mb"] = None
    row["passed"] = True
    assert not list((corpus / "out_dir.mp4").iterdir())  # the folder named as an output stays untouched


def test_outputs_are_checked_before_any_model_loads(corpus, tmp_path):
    """No weights at all: a bad output must be what the caller hears about, from the API and
    from a real `python -m dynamictrl` process (exit 2, one line, no traceback)."""
    import subprocess
    import sys

    studio = Studio(weights_dir=tmp_path / "no-weights", device="cpu")
    for case in (case for case in PROBE_CASES if case.stage == "output"):
        with pytest.raises(OutputError, match=EXPECTED[case.name][2]):
            run_output_case(case, corpus, studio)
    assert not any(entry["loaded"] for entry in studio.manager.status()) and studio._t5_tokenizer is None
    case = CASES_BY_NAME["output_is_folder"]
    command = [sys.executable, "-m", "dynamictrl", *cli_args(case, corpus, tmp_path, tmp_path / "no-weights")]
    result = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "out_dir.mp4 is a folder" in result.stderr, result.stderr


def test_heic_photo_through_the_app(client, corpus):
    """The app reads an iPhone photo: the upload widget hands the file over unopened
    (ui/uploads.py) and dynamictrl.images reads HEIC through pillow-heif."""
    case = CASES_BY_NAME["heic_photo"]
    row = {
        "case": case.name,
        "stage": case.stage,
        "what": case.what,
        "expected": case.expected,
        "via": "app /crop_preview",
    }
    RESULTS.append(row)
    started = time.perf_counter()
    try:
        with hang_guard(HANG_GUARD_S):
            crop, info = client.predict(**app_args("/crop_preview", corpus, case.file), api_name="/crop_preview")
        pixels = np.asarray(Image.open(crop).convert("RGB")).astype(int)
        row["outcome"] = f"ok: {info}"
        assert pixels.shape == (80, 64, 3) and "64x80" in info
        assert pixels[:, :, 0].max() > 200  # the red block of the photo survives the crop
    finally:
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["rss_mb"] = None
    row["passed"] = True


# ---------------------------------------------------------------------------- uploads served back (app)
# The SERVED_CASES block of make_corpus: what `/gradio_api/file=` answers for an upload.
# The same rule in a browser: tests/test_app_browser.py::test_uploaded_pages_and_scripts_never_run.


def upload_to_app(app_url: str, path: Path) -> str:
    """Uploads a file the way the page does (gradio's upload route); its path on the server."""
    import httpx

    response = httpx.post(f"{app_url}gradio_api/upload", files={"files": (path.name, path.read_bytes())}, timeout=30)
    response.raise_for_status()
    return response.json()[0]


@pytest.mark.parametrize("name", [case.name for case in SERVED_CASES])
def test_uploads_are_served_back_inert(name, tiny_app, corpus):
    import httpx

    case = next(case for case in SERVED_CASES if case.name == name)
    row = {
        "case": name,
        "stage": case.stage,
        "what": case.what,
        "expected": case.expected,
        "via": "app /gradio_api/file=",
    }
    RESULTS.append(row)
    started = time.perf_counter()
    try:
        served_path = upload_to_app(tiny_app.url, corpus / case.file)
        response = httpx.get(f"{tiny_app.url}gradio_api/file={served_path}", timeout=30)
        headers = response.headers
        row["outcome"] = (
            f"{response.status_code}, {headers.get('content-type')}, "
            f"{headers.get('content-disposition', 'no disposition')}, "
            f"nosniff: {headers.get('x-content-type-options') == 'nosniff'}"
        )
        assert headers.get("x-content-type-options") == "nosniff"
        if case.expected.startswith("refused"):
            assert response.status_code == 403 and headers["content-type"].startswith("text/plain")
            assert b"<script" not in response.content
        else:
            assert response.status_code == 200 and headers["content-type"] == "image/png"
            assert headers["content-disposition"].startswith("attachment")
            assert headers["content-security-policy"].startswith("sandbox")
            assert response.content == (corpus / case.file).read_bytes()
    finally:
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["rss_mb"] = None
    row["passed"] = True


def test_the_reference_cases_are_real_attacks(corpus):
    """Left to itself, ffmpeg decodes what the playlist, the concat list and the pattern name,
    and its log's first "Duration:" is the spoofed title: the cases above test real holes."""
    import subprocess

    import imageio_ffmpeg

    for name in ("playlist.m3u8", "list.ffconcat", "seq_%03d.png"):
        reader = imageio_ffmpeg.read_frames(str(corpus / name))
        meta = next(reader)
        frames = sum(1 for _ in reader)
        assert frames >= 3 and meta["size"] in ((64, 48), (48, 64)), (name, frames, meta["size"])
    for name in ("eleven_minutes_titled.mp4", "eleven_minutes_titled.flac"):
        log = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(corpus / name)],
            check=False,
            capture_output=True,
            text=True,
        ).stderr
        assert re.search(r"Duration: (\d+:\d+:\d+)", log).group(1) == "00:00:05", log


# ---------------------------------------------------------------------------- report


def _cell(text) -> str:
    text = "" if text is None else str(text)
    text = text if len(text) <= 220 else text[:217] + "..."
    return text.replace("|", "\\|").replace("\n", " ")


def render_report(results: list[dict]) -> str:
    api = [row for row in results if row["via"] == "API"]
    cli = [row for row in results if row["via"] == "CLI"]
    ray_rows = [row for row in results if row["via"].startswith("Ray")]
    app = [row for row in results if row["via"] not in ("API", "CLI") and not row["via"].startswith("Ray")]
    passed = sum(1 for row in results if row.get("passed"))
    known = [row for row in results if row.get("known_issue") and not row.get("passed")]
    slowest = max(results, key=lambda row: row.get("seconds") or 0.0)
    rss = [row["rss_mb"] for row in api if row.get("rss_mb") is not None]
    lines = [
        "# Reliability: the bad-input corpus",
        "",
        "Generated by `BADINPUTS_REPORT=tests/RELIABILITY.md python -m pytest tests/test_badinputs.py tests/test_serve.py`",
        "from the run's actual outcomes (do not edit by hand; rerun after changing a case or a message). The corpus is written by",
        "`tests/badinputs/make_corpus.py` (see `tests/badinputs/README.md`); the limits are `dynamictrl/limits.py`.",
        "",
        f"- Cases run: {len(results)} ({len(api)} through the Python API on tiny models, {len(cli)} through the CLI, "
        f"{len(app)} through the web app's endpoints, {len(ray_rows)} through the Ray gateway); passed: {passed}; known app-layer issues (strict xfail): {len(known)}"
        + (f" ({', '.join(row['case'] for row in known)}: {known[0]['known_issue']})." if known else "."),
        f"- Hang guard: {HANG_GUARD_S} s per case, held by every case; slowest: {slowest['case']} "
        f"({slowest['via']}), {slowest['seconds']} s.",
        f"- Test process memory (RSS) after the API cases: {rss[0]:.0f} MB after the first, {rss[-1]:.0f} MB after "
        f"the last, peak {max(rss):.0f} MB (tiny models, loaded along the way, and the test harness included)."
        if rss
        else "",
        "- ffmpeg processes left running after a case: "
        f"{sum(row.get('leaked_ffmpeg') or 0 for row in api)} (checked after every API case).",
        f"- Memory after faults: {MEMORY['calls']} more failing calls (every error case {FAULT_ROUNDS} more times, "
        f"models loaded): RSS {MEMORY['before']} MB before, {MEMORY['after']} MB after; open files "
        f"{MEMORY['files_before']} before, {MEMORY['files_after']} after; ffmpeg processes left: {MEMORY['ffmpeg']}."
        if MEMORY
        else "",
        "",
        "## Through the Python API",
        "",
        "| case | stage | input | expected | outcome | s | RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in api:
        lines.append(
            f"| {row['case']} | {row['stage']} | {_cell(row['what'])} | {_cell(row['expected'])} | "
            f"{_cell(row.get('outcome', 'FAILED'))}{'' if row.get('passed') else ' **(FAILED)**'} | "
            f"{row.get('seconds')} | {row.get('rss_mb')} |"
        )
    if cli:
        lines += [
            "",
            "## Through the CLI (`python -m dynamictrl ...`, the probe's cases)",
            "",
            "| case | stage | outcome the user sees | s |",
            "|---|---|---|---|",
        ]
        for row in cli:
            lines.append(
                f"| {row['case']} | {row['stage']} | {_cell(row.get('outcome', 'FAILED'))}"
                f"{'' if row.get('passed') else ' **(FAILED)**'} | {row.get('seconds')} |"
            )
    if ray_rows:
        lines += [
            "",
            "## Through the Ray gateway (`RemoteStudio` on the tiny service of tests/test_serve.py)",
            "",
            "| case | stage | how the file travels | outcome the caller sees | s |",
            "|---|---|---|---|---|",
        ]
        for row in ray_rows:
            lines.append(
                f"| {row['case']} | {row['stage']} | {row['via'][4:]} | {_cell(row.get('outcome', 'FAILED'))}"
                f"{'' if row.get('passed') else ' **(FAILED)**'} | {row.get('seconds')} |"
            )
    lines += [
        "",
        "## Through the web app (gradio_client, `app.py --tiny`)",
        "",
        "| case | endpoint | outcome the user sees | s |",
        "|---|---|---|---|",
    ]
    for row in app:
        status = "" if row.get("passed") else " **(known issue)**" if row.get("known_issue") else " **(FAILED)**"
        lines.append(
            f"| {row['case']} | {row['via'][4:]} | {_cell(row.get('outcome', 'FAILED'))}{status} | "
            f"{row.get('seconds')} |"
        )
    return "\n".join(lines) + "\n"


def test_report_renders_every_row():
    rows = [
        {
            "case": "a",
            "stage": "s",
            "what": "w|x",
            "expected": "e",
            "via": "API",
            "outcome": "ok: y",
            "seconds": 1.0,
            "rss_mb": 100,
            "passed": True,
            "leaked_ffmpeg": 0,
        },
        {"case": "b", "stage": "s", "what": "w", "expected": "e", "via": "app /x", "seconds": 2.0, "rss_mb": None},
        {
            "case": "c",
            "stage": "pose video",
            "what": "w",
            "expected": "e",
            "via": "Ray by value",
            "outcome": "VideoError: p.m3u8 is an HLS playlist",
            "seconds": 0.5,
            "passed": True,
        },
    ]
    text = render_report(rows)
    assert "| c | pose video | by value | VideoError: p.m3u8 is an HLS playlist | 0.5 |" in text
    assert "1 through the Ray gateway" in text and "| c | /" not in text  # not among the app's rows
    assert "| a | s | w\\|x | e | ok: y | 1.0 | 100 |" in text and "**(FAILED)**" in text and "passed: 2" in text
