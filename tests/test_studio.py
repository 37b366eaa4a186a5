import json

import numpy as np
import pytest
from PIL import Image

from dynamictrl.settings import PipelineOptions
from dynamictrl.studio import GenerateSettings, Studio, file_sha256, load_image
from dynamictrl.video import read_video, write_video


@pytest.fixture(scope="module")
def studio(tiny_weights):
    studio = Studio(weights_dir=tiny_weights, device="cpu")
    return studio


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    image = tmp_path / "ref.png"
    Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(image)
    pose = write_video(tmp_path / "pose.mp4", rng.integers(0, 255, (12, 64, 48, 3), dtype=np.uint8), fps=16)
    return image, pose


def settings(**overrides):
    values = dict(prompt="a person dancing", num_frames=9, width=48, height=64, steps=2, seed=7)
    values.update(overrides)
    return GenerateSettings(**values)


def test_generate_writes_video_and_manifest(studio, inputs, tmp_path):
    image, pose = inputs
    steps = []
    result = studio.generate(
        image, tmp_path / "out.mp4", settings(), pose_video_path=pose, progress=lambda f, m: steps.append(f)
    )
    video = read_video(result.video_path)
    assert video.num_frames == 9 and video.size == (64, 48) and video.fps == pytest.approx(16)
    assert steps == [0.5, 1.0]

    manifest = json.loads(result.manifest_path.read_text())
    assert result.manifest_path == tmp_path / "out.json"
    assert manifest["settings"]["seed"] == 7 and manifest["settings"]["num_frames"] == 9
    assert manifest["inputs"]["image"]["sha256"] == file_sha256(image)
    assert manifest["inputs"]["pose_video"]["sha256"] == file_sha256(pose)
    assert manifest["models"]["base"] == "gulucaptain/DynamiCtrl"
    assert {"torch", "diffusers", "transformers", "dynamictrl"} <= set(manifest["versions"])
    assert manifest["elapsed_s"] > 0 and manifest["torch_dtype"] == "float32"
    assert manifest["memory_tier"] == "none"  # on the CPU


@pytest.mark.slow  # several studio jobs end to end
def test_same_seed_same_frames(studio, inputs, tmp_path):
    image, pose = inputs
    a = studio.generate(image, tmp_path / "a.mp4", settings(seed=3), pose_video_path=pose, return_frames=True).frames
    b = studio.generate(image, tmp_path / "b.mp4", settings(seed=3), pose_video_path=pose, return_frames=True).frames
    np.testing.assert_array_equal(a, b)


def test_variant_is_loaded_and_recorded(studio, inputs, tmp_path):
    image, pose = inputs
    result = studio.generate(image, tmp_path / "v.mp4", settings(variant="mask_background"), pose_video_path=pose)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["models"]["transformer"] == "gulucaptain/Dynamictrl-Mask_B01"
    loaded = {row["name"] for row in studio.manager.status() if row["loaded"]}
    assert "dynamictrl.transformer.mask_background" in loaded
    assert "dynamictrl.transformer.base" not in loaded  # the base transformer was let go


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(width=8000), "out of range"),
        (dict(num_frames=13), "use --frames 9"),
        (dict(variant="mask_hair"), "variant must be one of mask_background, mask_clothing"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_bad_settings_fail_before_loading_anything(studio, inputs, tmp_path, overrides, message):
    image, pose = inputs
    with pytest.raises(ValueError, match=message):
        studio.generate(image, tmp_path / "x.mp4", settings(**overrides), pose_video_path=pose)
    assert not (tmp_path / "x.mp4").exists()


def test_output_must_be_mp4(studio, inputs, tmp_path):
    with pytest.raises(ValueError, match="mp4"):
        studio.generate(inputs[0], tmp_path / "x.gif", settings(), pose_video_path=inputs[1])


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 48).reshape(64, 48)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    values = np.asarray(image)[..., 0]
    assert values.min() == 0 and values.max() == 255 and 100 < values.mean() < 155


def test_transparent_png_gets_black_background(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    array = np.asarray(load_image(path))
    assert (array[:8, :, 0] == 255).all() and (array[8:] == 0).all()


def test_unreadable_image_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Could not read the image"):
        load_image(path)
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "missing.png")


@pytest.mark.slow  # several studio jobs end to end
def test_dtype_switch_and_speed_settings_reach_the_pipeline(studio, inputs, tmp_path):
    image, pose = inputs
    result = studio.generate(
        image,
        tmp_path / "bf.mp4",
        settings(dtype="bf16", memory=PipelineOptions(first_block_cache=0.05)),
        pose_video_path=pose,
    )
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["torch_dtype"] == "bfloat16" and manifest["settings"]["memory"]["first_block_cache"] == 0.05
    assert result.frames is None and result.num_frames == 9  # streamed to the mp4, not kept


@pytest.fixture(scope="module")
def tool_studio(tiny_weights):
    """A studio whose SAM and Qwen2-VL are the tiny test models (DWPose, DynamiCtrl too)."""
    from dynamictrl.segment import Segmenter
    from dynamictrl.testing.qwen import save_tiny_qwen
    from dynamictrl.testing.sam import build_tiny_sam

    if not (tiny_weights / "Qwen2-VL-2B-Instruct").exists():
        save_tiny_qwen(tiny_weights)
    studio = Studio(weights_dir=tiny_weights, device="cpu")
    # SAM checkpoints are checked against the official file size, so the tiny model is
    # registered directly under the name the studio uses.
    studio.manager.register("sam.vit_b", lambda: Segmenter(build_tiny_sam(), device="cpu"))
    return studio


@pytest.fixture
def red_reference(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (360, 480), (255, 0, 0)).save(path)  # the tiny detector finds people in red
    return path


@pytest.mark.parametrize("mode", ["background", "clothing"])
def test_mask_blacks_out_the_region_at_the_target_size(tool_studio, red_reference, tmp_path, mode):
    result = tool_studio.mask(red_reference, mode, 48, 64, out_path=tmp_path / "m.png", mask_path=tmp_path / "k.png")
    assert result.mask.shape == (64, 48) and result.mask.dtype == bool
    assert 0 < result.mask.mean() < 1
    assert (result.masked[result.mask] == 0).all()
    assert (result.masked[~result.mask] == (255, 0, 0)).all()
    assert np.asarray(Image.open(tmp_path / "m.png")).shape == (64, 48, 3)


def test_mask_with_points_and_refused_points(tool_studio, red_reference):
    result = tool_studio.mask(red_reference, "clothing", 48, 64, points=[(24, 30, 1), (5, 5, 0)])
    assert result.mask.shape == (64, 48)
    with pytest.raises(ValueError, match="48x64"):
        tool_studio.mask(red_reference, "clothing", 48, 64, points=[(100, 30, 1)])


def test_no_person_no_pose_based_mask(tool_studio, tmp_path):
    path = tmp_path / "empty.png"
    Image.new("RGB", (360, 480), (0, 0, 255)).save(path)
    with pytest.raises(ValueError, match="No person found"):
        tool_studio.mask(path, "background", 48, 64)


@pytest.mark.slow  # several studio jobs end to end
def test_caption_fits_t5_and_masked_caption_has_a_placeholder(tool_studio, red_reference):
    from dynamictrl.caption import has_placeholder

    plain = tool_studio.caption(red_reference)
    assert plain.text and plain.t5_tokens <= 226 and not has_placeholder(plain.text)
    masked = tool_studio.caption(red_reference, mask_mode="background")
    assert has_placeholder(masked.text)


@pytest.mark.slow  # several studio jobs end to end
def test_generate_with_mask_mode_picks_the_variant_and_auto_captions(tool_studio, red_reference, tmp_path):
    pose = write_video(tmp_path / "pose.mp4", np.zeros((9, 64, 48, 3), np.uint8), fps=16)
    result = tool_studio.generate(
        red_reference,
        tmp_path / "masked.mp4",
        settings(prompt="", mask_mode="background", mask_fill="a sunny beach"),
        pose_video_path=pose,
    )
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["models"]["transformer"] == "gulucaptain/Dynamictrl-Mask_B01"
    assert manifest["mask"]["mode"] == "background" and 0 < manifest["mask"]["masked_fraction"] < 1
    assert manifest["prompt_used"].endswith("a sunny beach.") and "[" not in manifest["prompt_used"]
    assert (tmp_path / "masked_reference.png").is_file()


def test_masked_caption_without_fill_stops_with_the_caption(tool_studio, red_reference, tmp_path):
    pose = write_video(tmp_path / "pose.mp4", np.zeros((9, 64, 48, 3), np.uint8), fps=16)
    with pytest.raises(ValueError, match="Auto caption: .*--fill"):
        tool_studio.generate(
            red_reference, tmp_path / "x.mp4", settings(prompt="", mask_mode="clothing"), pose_video_path=pose
        )
    with pytest.raises(ValueError, match="placeholder"):
        tool_studio.generate(
            red_reference,
            tmp_path / "x.mp4",
            settings(prompt="A man. [Describe the new clothing here.]"),
            pose_video_path=pose,
        )
    with pytest.raises(ValueError, match="goes with variant 'mask_clothing'"):
        tool_studio.generate(
            red_reference,
            tmp_path / "x.mp4",
            settings(mask_mode="clothing", variant="mask_background"),
            pose_video_path=pose,
        )


@pytest.mark.slow  # several studio jobs end to end
def test_pose_video_made_earlier_keeps_its_provenance(studio, inputs, tmp_path):
    image, pose = inputs
    provenance = {"driving_video": "dance.mp4", "settings": {"retarget": "bones"}, "filled_frames": 2}
    result = studio.generate(image, tmp_path / "p.mp4", settings(), pose_video_path=pose, pose_provenance=provenance)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["inputs"]["pose_extraction"] == provenance
    assert manifest["inputs"]["pose_video"]["sha256"] == file_sha256(pose)


@pytest.mark.slow  # several studio jobs end to end
def test_cancel_from_the_progress_callback_stops_cleanly(studio, inputs, tmp_path):
    from dynamictrl.studio import Cancelled

    image, pose = inputs

    def cancel_at_first_step(fraction, message):
        if message.startswith("denoising"):
            raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        studio.generate(image, tmp_path / "c.mp4", settings(), pose_video_path=pose, progress=cancel_at_first_step)
    assert not (tmp_path / "c.mp4").exists() and not (tmp_path / "c.json").exists()
    assert not any(row["in_use"] for row in studio.manager.status())  # nothing left held
    assert studio.generate(image, tmp_path / "after.mp4", settings(), pose_video_path=pose).num_frames == 9


# ------------------------------------------------------------------ lip-sync
@pytest.fixture(scope="module")
def lip_studio(lipsync_weights, tmp_path_factory):
    return Studio(weights_dir=lipsync_weights, device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


def talking_video(path, num_frames=6, gate=255, fps=25):
    """Frames whose top-left block makes the tiny DWPose find people (see dynamictrl/testing/onnx.py)."""
    frames = np.random.default_rng(3).integers(0, 255, (num_frames, 240, 320, 3), dtype=np.uint8)
    frames[:, :16, :16] = (gate, 0, 0)
    return write_video(path, frames, fps=fps)


def wav(path, seconds, amplitude=0.3):
    from scipy.io import wavfile

    t = np.arange(int(seconds * 16000)) / 16000
    wavfile.write(path, 16000, (amplitude * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16))
    return path


@pytest.mark.slow  # tiny MuseTalk end to end
def test_lipsync_writes_video_with_audio_and_caches_the_avatar(lip_studio, tmp_path):
    import imageio_ffmpeg

    video = talking_video(tmp_path / "talk.mp4")
    runs_before = lip_studio.manager.get("dwpose").stats.detector_runs
    first = lip_studio.lipsync(video, wav(tmp_path / "a.wav", 0.5), tmp_path / "out.mp4")
    assert lip_studio.manager.get("dwpose").stats.detector_runs == runs_before + 6
    out = read_video(first.video_path)
    assert out.num_frames == 12 == first.report.output_frames and out.size == (240, 320)
    assert first.report.looped and not first.report.avatar_cached
    _, seconds = imageio_ffmpeg.count_frames_and_secs(str(first.video_path))
    probe = imageio_ffmpeg.read_frames(str(first.video_path))
    assert probe.__next__()["audio_codec"] == "aac"
    probe.close()
    assert seconds == pytest.approx(0.48, abs=0.05)
    manifest = json.loads(first.manifest_path.read_text())
    assert manifest["kind"] == "lipsync" and manifest["inputs"]["video"]["sha256"] == file_sha256(video)
    assert manifest["report"]["output_frames"] == 12 and "forward and backward" in manifest["report"]["summary"]

    # A new audio clip for the same video: no detection, no encoding; a shorter clip cuts the video.
    second = lip_studio.lipsync(video, wav(tmp_path / "b.wav", 0.17), tmp_path / "out2.mp4")
    assert second.report.avatar_cached and second.report.trimmed
    assert lip_studio.manager.get("dwpose").stats.detector_runs == runs_before + 6
    assert read_video(second.video_path).num_frames == 4
    # A fresh process finds the avatar on disk.
    again = Studio(weights_dir=lip_studio.weights_dir, device="cpu", cache_dir=lip_studio.cache_dir)
    third = again.lipsync(video, tmp_path / "b.wav", tmp_path / "out3.mp4")
    assert third.report.avatar_cached and again._avatars.hits["disk"] == 1


def test_lipsync_bad_inputs_are_clear_errors(lip_studio, tmp_path):
    from dynamictrl.lipsync.audio import AudioError
    from dynamictrl.lipsync.pipeline import NoFaceError
    from dynamictrl.video import VideoError

    video = talking_video(tmp_path / "talk.mp4", num_frames=2)
    with pytest.raises(AudioError, match="silent"):
        lip_studio.lipsync(video, wav(tmp_path / "quiet.wav", 0.5, amplitude=0.0), tmp_path / "o.mp4")
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(AudioError):
        lip_studio.lipsync(video, tmp_path / "notes.wav", tmp_path / "o.mp4")
    with pytest.raises(ValueError, match=".mp4"):
        lip_studio.lipsync(video, wav(tmp_path / "a.wav", 0.3), tmp_path / "o.gif")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError):
        lip_studio.lipsync(tmp_path / "broken.mp4", tmp_path / "a.wav", tmp_path / "o.mp4")
    nobody = talking_video(tmp_path / "nobody.mp4", num_frames=3, gate=0)
    with pytest.raises(NoFaceError, match="frames 0-2"):
        lip_studio.lipsync(nobody, tmp_path / "a.wav", tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.slow  # tiny MuseTalk end to end
def test_cancelling_a_lipsync_writes_nothing(lip_studio, tmp_path):
    from dynamictrl.lipsync.settings import LipSyncSettings
    from dynamictrl.studio import Cancelled

    video = talking_video(tmp_path / "talk.mp4", num_frames=4)
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message.startswith("Lip-sync: frame"):
            raise Cancelled()

    with pytest.raises(Cancelled):
        lip_studio.lipsync(
            video, wav(tmp_path / "a.wav", 0.9), tmp_path / "out.mp4", LipSyncSettings(batch_size=4), progress=progress
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "talk.mp4"]
    assert any(m.startswith("DWPose") for m in seen) and any(m.startswith("Lip-sync: preparing") for m in seen)
    assert not any(entry["in_use"] for entry in lip_studio.manager.status())


def test_manifests_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from dynamictrl.studio import write_json_atomic

    target = write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    def full_disk(self, text, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(target), "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(tmp_path / "m.json", {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}  # the old manifest is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no partial file left


def test_a_cancelled_generation_leaves_nothing_beside_its_output(studio, tmp_path):
    from dynamictrl.studio import Cancelled, PoseSettings

    rng = np.random.default_rng(4)
    image = tmp_path / "ref.png"
    still = rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)
    still[:16, :16] = (255, 0, 0)  # the tiny DWPose finds a person (dynamictrl/testing/onnx.py)
    Image.fromarray(still).save(image)
    frames = rng.integers(0, 255, (12, 80, 60, 3), dtype=np.uint8)
    frames[:, :16, :16] = (255, 0, 0)
    driving = write_video(tmp_path / "dance.mp4", frames, fps=16)
    out = tmp_path / "out" / "clip.mp4"
    earlier = out.with_name("clip_reference.png")  # an earlier run's file under the same name
    earlier.parent.mkdir()
    earlier.write_bytes(b"earlier run")

    def cancel_at_denoising(fraction, message):
        if message.startswith("denoising"):
            assert out.with_name("clip_pose.mp4").is_file()  # written before denoising...
            raise Cancelled()

    with pytest.raises(Cancelled):
        studio.generate(
            image,
            out,
            settings(),
            driving_video_path=driving,
            pose_settings=PoseSettings(),
            progress=cancel_at_denoising,
        )
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip_reference.png"]  # ...and removed; the old file kept


def test_mask_writes_both_images_or_neither(tool_studio, red_reference, tmp_path, monkeypatch):
    from dynamictrl import outputs

    real_save = outputs.save_image_atomic

    def mask_save_fails(path, image):
        if path.name == "k.png":
            raise OSError(28, "No space left on device")
        return real_save(path, image)

    monkeypatch.setattr("dynamictrl.studio.save_image_atomic", mask_save_fails)
    with pytest.raises(OSError, match="No space"):
        tool_studio.mask(red_reference, "clothing", 48, 64, out_path=tmp_path / "m.png", mask_path=tmp_path / "k.png")
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "k.png").exists()
    assert not list(tmp_path.glob(".*partial"))
