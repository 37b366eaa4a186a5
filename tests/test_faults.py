"""Issue #11 part 3: injected faults (an exception mid-denoising, out of memory, a killed
or failing ffmpeg, a full disk) leave no half-written output and leave the studio usable.

Every case runs the public `Studio` API on the tiny models and then checks three things:
nothing is left in the output folder (no video, no `.partial` file, no manifest); the
model manager holds nothing and the same studio runs a normal job; host memory is back
at its idle level, measured as live torch tensor bytes (exact) and RSS (allocator caches
make it noisy, so its bound is generous). The figures are printed at the end of the
module and saved to tests/artifacts/fault_memory.json.
"""

import ctypes
import ctypes.util
import errno
import gc
import json
import resource
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from dynamictrl.manager import OutOfMemory
from dynamictrl.studio import GenerateSettings, Studio
from dynamictrl.video import VideoError, read_video, write_video

pytestmark = pytest.mark.slow  # fault injection: OOM retries, killed ffmpeg, full disk, memory back to idle

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# A leak of the tiny models' activations is a few hundred KB; parameters do not change.
TENSOR_SLACK_MB = 0.05
# RSS moves with the allocator's caches and pytest's own bookkeeping, not only with leaks.
RSS_SLACK_MB = 48.0
FIGURES: dict[str, dict] = {}


def _trim_heap():
    """Returns freed heap pages to the OS (glibc), so RSS reflects what is still in use."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def memory_level() -> dict:
    """Live torch tensor bytes (storages counted once) and RSS, in MB, after a full collection."""
    gc.collect()
    _trim_heap()
    seen, tensor_bytes = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                tensor_bytes += storage.nbytes()
    return {"tensor_mb": round(tensor_bytes / 2**20, 3), "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1)}


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    if not FIGURES:
        return
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fault_memory.json").write_text(json.dumps(FIGURES, indent=2))
    print("\nHost memory, idle (after warm-up jobs) vs after each fault + gc:")
    for name, row in FIGURES.items():
        print(f"  {name:40s} {row}")


def record(name: str, idle: dict, after: dict) -> None:
    FIGURES[name] = {
        "idle_tensor_mb": idle["tensor_mb"],
        "after_tensor_mb": after["tensor_mb"],
        "idle_rss_mb": idle["rss_mb"],
        "after_rss_mb": after["rss_mb"],
        "rss_delta_mb": round(after["rss_mb"] - idle["rss_mb"], 1),
    }
    assert after["tensor_mb"] <= idle["tensor_mb"] + TENSOR_SLACK_MB, FIGURES[name]
    assert after["rss_mb"] <= idle["rss_mb"] + RSS_SLACK_MB, FIGURES[name]


# ------------------------------------------------------------------ generation
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault_inputs")
    rng = np.random.default_rng(0)
    image = folder / "ref.png"
    Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(image)
    pose = write_video(folder / "pose.mp4", rng.integers(0, 255, (12, 64, 48, 3), dtype=np.uint8), fps=16)
    return image, pose


def settings(**overrides) -> GenerateSettings:
    values = dict(prompt="a person dancing", num_frames=9, width=48, height=64, steps=2, seed=7)
    values.update(overrides)
    return GenerateSettings(**values)


@pytest.fixture(scope="module")
def studio(tiny_weights):
    return Studio(weights_dir=tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def idle(studio, inputs, tmp_path_factory):
    """The memory level after warm-up jobs: models loaded, nothing running."""
    folder = tmp_path_factory.mktemp("warm_up")
    for name in ("a", "b"):  # the second settles what the first allocated lazily
        studio.generate(inputs[0], folder / f"{name}.mp4", settings(), pose_video_path=inputs[1])
    return memory_level()


def run_fault(studio, inputs, out_dir: Path, error, match: str | None = None, **kwargs) -> str:
    """Runs a generation that must fail with `error`; returns the message. The exception
    info is dropped here, so its traceback does not keep the job's tensors alive."""
    with pytest.raises(error, match=match) as caught:
        studio.generate(inputs[0], out_dir / "out.mp4", settings(), pose_video_path=inputs[1], **kwargs)
    message = str(caught.value)
    del caught
    return message


def check_clean_and_usable(name: str, studio, inputs, out_dir: Path, idle: dict) -> None:
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert left == [], f"{name} left {left}"
    manager = studio.manager
    assert not manager.gpu_lock.locked()
    rows = {row["name"]: row for row in manager.status()}
    assert not any(row["in_use"] for row in rows.values()), rows
    # The models stay loaded: the next job does not pay for loading them again.
    assert rows["dynamictrl.shared"]["loaded"] and rows["dynamictrl.transformer.base"]["loaded"]
    record(name, idle, memory_level())
    result = studio.generate(inputs[0], out_dir / "next.mp4", settings(), pose_video_path=inputs[1])
    assert read_video(result.video_path).num_frames == 9 and result.manifest_path.is_file()


def transformer_class(studio):
    return type(studio.manager.get("dynamictrl.transformer.base"))


def test_exception_from_the_progress_callback_mid_denoising(studio, inputs, idle, tmp_path):
    steps = []

    def progress(fraction, message):
        if message.startswith("denoising"):
            steps.append(message)
            raise RuntimeError("injected: the callback failed after step 1")

    out_dir = tmp_path / "out"
    run_fault(studio, inputs, out_dir, RuntimeError, match="injected", progress=progress)
    assert steps == ["denoising step 1/2"]  # stopped between the two steps
    check_clean_and_usable("exception in progress callback", studio, inputs, out_dir, idle)


def test_exception_from_the_transformer_forward_mid_denoising(studio, inputs, idle, tmp_path, monkeypatch):
    cls = transformer_class(studio)
    forward = cls.forward
    calls = []

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected: the transformer failed in step 2")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", failing_forward)
    out_dir = tmp_path / "out"
    run_fault(studio, inputs, out_dir, RuntimeError, match="injected")
    monkeypatch.undo()
    assert len(calls) == 2
    check_clean_and_usable("exception in transformer forward", studio, inputs, out_dir, idle)


def test_out_of_memory_twice_names_what_to_lower(studio, inputs, idle, tmp_path, monkeypatch):
    """OOM in the first tier is retried once in the next one; a second OOM is reported.
    On the CPU the tier is `none` and the retry runs in `model` (placed on the CPU alike)."""
    cls = transformer_class(studio)
    forward = cls.forward
    calls = []

    def oom_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:  # step 2 of the first try, then at once in the retry
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", oom_forward)
    out_dir = tmp_path / "out"
    message = run_fault(studio, inputs, out_dir, OutOfMemory)
    monkeypatch.undo()
    assert len(calls) == 3  # two steps in `none`, one in `model`
    assert "even with the 'model' memory tier" in message and "Lower the resolution" in message
    assert "48x64, 9 frames" in message
    check_clean_and_usable("out of memory twice", studio, inputs, out_dir, idle)


def test_out_of_memory_once_is_retried_in_the_next_tier(studio, inputs, idle, tmp_path, monkeypatch):
    cls = transformer_class(studio)
    forward = cls.forward
    calls = []

    def oom_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", oom_once)
    result = studio.generate(
        inputs[0], tmp_path / "retried.mp4", settings(), pose_video_path=inputs[1], return_frames=True
    )
    monkeypatch.undo()
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["memory_tier"] == "model" and len(calls) == 4  # 2 in `none` (the 2nd failed), 2 in `model`
    assert read_video(result.video_path).num_frames == 9
    # The retry starts from the same seed: the frames equal those of an undisturbed job.
    again = studio.generate(
        inputs[0], tmp_path / "undisturbed.mp4", settings(), pose_video_path=inputs[1], return_frames=True
    )
    np.testing.assert_array_equal(result.frames, again.frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "retried.json",
        "retried.mp4",
        "undisturbed.json",
        "undisturbed.mp4",
    ]


class FaultyWriter:
    """Stands in for imageio-ffmpeg's frame writer (a generator): `fault(writer)` runs just
    before frame number `at` is sent (a fault that raises stops the writing there)."""

    def __init__(self, inner, at: int, fault):
        self.inner, self.at, self.fault = inner, at, fault
        self.frames = 0
        self.process = None

    def send(self, frame):
        if frame is None:
            result = self.inner.send(None)  # starts ffmpeg
            # The generator's ffmpeg process: what a crash or the OOM killer would kill.
            self.process = self.inner.gi_frame.f_locals["p"]
            return result
        self.frames += 1
        if self.frames == self.at:
            self.fault(self)
        return self.inner.send(frame)

    def close(self):
        return self.inner.close()

    @property
    def gi_frame(self):
        """The generator's frame, for a writer that looks at ffmpeg's process through it."""
        return self.inner.gi_frame


def inject_writer_fault(monkeypatch, at: int, fault) -> list:
    real = imageio_ffmpeg.write_frames
    writers = []

    def write_frames(*args, **kwargs):
        writers.append(FaultyWriter(real(*args, **kwargs), at, fault))
        return writers[-1]

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", write_frames)
    return writers


def test_ffmpeg_killed_mid_stream(studio, inputs, idle, tmp_path, monkeypatch):
    def kill(writer):
        writer.process.kill()
        writer.process.wait()

    writers = inject_writer_fault(monkeypatch, at=4, fault=kill)
    out_dir = tmp_path / "out"
    run_fault(studio, inputs, out_dir, OSError, match="Broken pipe")
    monkeypatch.undo()
    assert writers[0].frames == 4 and writers[0].process.returncode == -9
    check_clean_and_usable("ffmpeg killed mid-stream", studio, inputs, out_dir, idle)


def test_disk_full_while_writing_frames(studio, inputs, idle, tmp_path, monkeypatch):
    def disk_full(writer):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    inject_writer_fault(monkeypatch, at=5, fault=disk_full)
    out_dir = tmp_path / "out"
    run_fault(studio, inputs, out_dir, OSError, match="No space left")
    monkeypatch.undo()
    check_clean_and_usable("disk full writing frames", studio, inputs, out_dir, idle)


def test_ffmpeg_dying_while_it_writes_the_file(studio, inputs, idle, tmp_path, monkeypatch):
    """ffmpeg itself fails to write (a file size limit: as a full disk looks to ffmpeg; it
    is killed by SIGXFSZ) after frames were accepted: imageio-ffmpeg does not look at
    ffmpeg's exit status, so the writer must."""
    real = imageio_ffmpeg.write_frames

    class Started:
        def __init__(self, inner):
            self.inner = inner

        def send(self, frame):
            return None if frame is None else self.inner.send(frame)

        def close(self):
            return self.inner.close()

        @property
        def gi_frame(self):
            return self.inner.gi_frame

    def write_frames(*args, **kwargs):
        writer = real(*args, **kwargs)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # Only the ffmpeg child keeps the limit: this process has it just while spawning.
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
        try:
            writer.send(None)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        return Started(writer)

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", write_frames)
    out_dir = tmp_path / "out"
    run_fault(studio, inputs, out_dir, VideoError)
    monkeypatch.undo()
    check_clean_and_usable("ffmpeg dies writing the file", studio, inputs, out_dir, idle)


def test_disk_full_while_writing_the_manifest(studio, inputs, idle, tmp_path, monkeypatch):
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name.endswith(".json.partial"):
            real(self, data[: len(data) // 2], *args, **kwargs)  # what fitted before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device (injected)", str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    out_dir = tmp_path / "out"
    run_fault(studio, inputs, out_dir, OSError, match="No space left")
    monkeypatch.undo()
    check_clean_and_usable("disk full writing the manifest", studio, inputs, out_dir, idle)


# ------------------------------------------------------------------ lip-sync
@pytest.fixture(scope="module")
def lip_studio(lipsync_weights, tmp_path_factory):
    return Studio(weights_dir=lipsync_weights, device="cpu", cache_dir=tmp_path_factory.mktemp("fault_cache"))


def talking_video(path, num_frames=3):
    frames = np.random.default_rng(3).integers(0, 255, (num_frames, 120, 160, 3), dtype=np.uint8)
    frames[:, :16, :16] = (255, 0, 0)  # the tiny DWPose finds people (dynamictrl/testing/onnx.py)
    return write_video(path, frames, fps=25)


def speech(path, seconds=0.16):
    from scipy.io import wavfile

    t = np.arange(int(seconds * 16000)) / 16000
    wavfile.write(path, 16000, (0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16))
    return path


def test_lipsync_fault_mid_generation(lip_studio, tmp_path):
    from dynamictrl.lipsync.settings import LipSyncSettings

    video, audio = talking_video(tmp_path / "talk.mp4"), speech(tmp_path / "speech.wav")
    lip_settings = LipSyncSettings(batch_size=2)  # 4 output frames: two batches
    lip_studio.lipsync(video, audio, tmp_path / "warm" / "a.mp4", lip_settings)  # models loaded, the avatar cached
    idle = memory_level()

    seen = []

    def progress(fraction, message):
        if message.startswith("Lip-sync: frame"):
            seen.append(message)
            # Reported after the first batch's frames went to the encoder: the file is half written.
            raise RuntimeError("injected: the UNet failed mid-video")

    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected") as caught:
        lip_studio.lipsync(video, audio, out_dir / "talking.mp4", lip_settings, progress=progress)
    del caught
    assert seen == ["Lip-sync: frame 2/4"]
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert left == []
    assert not lip_studio.manager.gpu_lock.locked()
    assert not any(row["in_use"] for row in lip_studio.manager.status())
    record("lip-sync exception mid-generation", idle, memory_level())
    result = lip_studio.lipsync(video, audio, out_dir / "next.mp4", lip_settings)
    assert read_video(result.video_path).num_frames == result.report.output_frames and result.manifest_path.is_file()
