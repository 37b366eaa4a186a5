import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from dynamictrl import weights
from dynamictrl.pipeline import DynamiCtrlPipeline, frames_to_uint8_tensor, latent_layout
from tests.conftest import official_fixture


def rel_l2(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / b.norm())


def make_image(height=64, width=48, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def make_pose(frames=9, height=64, width=48, seed=0):
    return torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def run(pipe, frames=9, height=64, width=48, seed=42, **kwargs):
    kwargs.setdefault("prompt", "a person dancing")
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(
        image=kwargs.pop("image", make_image(height, width)),
        pose_video=kwargs.pop("pose_video", make_pose(frames, height, width)),
        generator=torch.Generator().manual_seed(seed),
        height=height,
        width=width,
        **kwargs,
    ).frames


def test_reproduces_official_pipeline_frames():
    root = official_fixture("official_pipeline_tiny")
    pipe = DynamiCtrlPipeline.from_pretrained(root / "model")
    pipe.set_progress_bar_config(disable=True)
    pose = load_file(root / "pose_13.safetensors")["pose_u8"].permute(0, 3, 1, 2).float() / 127.5 - 1
    expected = load_file(root / "case_a.safetensors")["frames"]

    frames = pipe(
        image=PIL.Image.open(root / "image.png"),
        pose_video=pose,
        prompt="a person dancing",
        negative_prompt="",
        height=48,
        width=32,
        num_frames=13,
        num_inference_steps=3,
        guidance_scale=3.0,
        use_dynamic_cfg=False,
        generator=torch.Generator().manual_seed(42),
        max_sequence_length=226,
        output_type="np",
    ).frames

    assert frames.shape == (1, 13, 48, 32, 3)
    assert rel_l2(frames[0], expected) < 1e-4


def test_pipeline_components_and_scheduler_settings(tiny_pipe):
    assert type(tiny_pipe.transformer).__name__ == "DynamiCtrlTransformerModel"
    assert tiny_pipe.scheduler.config.timestep_spacing == "trailing"
    assert tiny_pipe.vae.config.scaling_factor == 0.7
    assert tiny_pipe.vae.use_tiling and tiny_pipe.vae.use_slicing


@pytest.mark.slow  # several full pipeline runs
def test_same_seed_same_video_other_seed_other_video(tiny_pipe):
    first = run(tiny_pipe, seed=3)
    again = run(tiny_pipe, seed=3)
    other = run(tiny_pipe, seed=4)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 1e-4


@pytest.mark.slow  # several full pipeline runs
def test_guidance_on_and_off(tiny_pipe):
    guided = run(tiny_pipe, guidance_scale=3.0)
    unguided = run(tiny_pipe, guidance_scale=1.0)
    stronger = run(tiny_pipe, guidance_scale=6.0)
    assert guided.shape == unguided.shape == stronger.shape
    assert np.abs(guided - unguided).mean() > 1e-5
    assert np.abs(guided - stronger).mean() > 1e-5


@pytest.mark.slow  # full pipeline runs
def test_prompt_embeddings_are_computed_once_per_call(tiny_pipe, monkeypatch):
    calls = []
    original = tiny_pipe.text_encoder.forward
    monkeypatch.setattr(tiny_pipe.text_encoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    run(tiny_pipe, num_inference_steps=3, guidance_scale=3.0)
    assert len(calls) == 2  # positive and negative, not per step


@pytest.mark.parametrize(
    "frames", [9, 13, pytest.param(17, marks=pytest.mark.slow), pytest.param(37, marks=pytest.mark.slow)]
)
def test_frame_counts_including_odd_latent_counts(tiny_pipe, frames):
    layout = latent_layout(frames, 4, 2)
    video = run(tiny_pipe, frames=frames, height=32, width=32, output_type="pt")
    latents = run(tiny_pipe, frames=frames, height=32, width=32, output_type="latent")
    assert video.shape == (1, frames, 3, 32, 32)
    assert latents.shape == (1, layout.latent_frames, 4, 4, 4)
    assert layout.padded_latent_frames % 2 == 0
    assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1


def test_odd_latent_count_pads_image_and_pose_like_the_noise(tiny_pipe):
    # 9 frames -> 3 latents -> one front padding frame; image and pose latents are padded by
    # repeating their first frame, so the pose of frame 0 conditions the padding too.
    layout = latent_layout(9, 4, 2)
    assert (layout.latent_frames, layout.padding) == (3, 1)
    image = tiny_pipe.video_processor.preprocess(make_image(32, 32), height=32, width=32)
    pose = make_pose(9, 32, 32).unsqueeze(0)
    image_latents, pose_latents = tiny_pipe.encode_condition_latents(
        image, pose, layout, torch.Generator().manual_seed(0), torch.float32
    )
    assert image_latents.shape[1] == pose_latents.shape[1] == 4
    torch.testing.assert_close(image_latents[:, 0], image_latents[:, 1])
    assert image_latents[:, 2:].abs().sum() == 0
    torch.testing.assert_close(pose_latents[:, 0], pose_latents[:, 1])


def test_even_latent_count_is_not_padded(tiny_pipe):
    layout = latent_layout(13, 4, 2)
    image = tiny_pipe.video_processor.preprocess(make_image(32, 32), height=32, width=32)
    image_latents, pose_latents = tiny_pipe.encode_condition_latents(
        image, make_pose(13, 32, 32).unsqueeze(0), layout, torch.Generator().manual_seed(0), torch.float32
    )
    assert layout.padding == 0 and image_latents.shape[1] == pose_latents.shape[1] == 4
    assert image_latents[:, 1:].abs().sum() == 0  # image latent, then zeros


def test_pose_latents_are_scaled_and_image_latent_is_not(tiny_pipe):
    layout = latent_layout(5, 4, 2)
    image = tiny_pipe.video_processor.preprocess(make_image(32, 32), height=32, width=32)
    pose = make_pose(5, 32, 32).unsqueeze(0)
    image_latents, pose_latents = tiny_pipe.encode_condition_latents(
        image, pose, layout, torch.Generator().manual_seed(0), torch.float32
    )
    generator = torch.Generator().manual_seed(0)
    raw_image = tiny_pipe.vae.encode(image.unsqueeze(2)).latent_dist.sample(generator)
    raw_pose = tiny_pipe.vae.encode(pose.permute(0, 2, 1, 3, 4)).latent_dist.sample(generator)
    torch.testing.assert_close(image_latents[:, 0], raw_image[:, :, 0])
    torch.testing.assert_close(pose_latents, 0.7 * raw_pose.permute(0, 2, 1, 3, 4))


@pytest.mark.slow  # several full pipeline runs
def test_the_pose_steers_the_video(tiny_pipe):
    a = run(tiny_pipe, pose_video=make_pose(seed=1))
    b = run(tiny_pipe, pose_video=make_pose(seed=2))
    assert np.abs(a - b).mean() > 1e-5


@pytest.mark.parametrize("height,width", [(32, 64), (64, 32), (80, 48)])
def test_non_square_sizes(tiny_pipe, height, width):
    video = run(tiny_pipe, frames=5, height=height, width=width)
    assert video.shape == (1, 5, height, width, 3)


@pytest.mark.slow  # several full pipeline runs
def test_output_types(tiny_pipe):
    pil = run(tiny_pipe, frames=5, output_type="pil")
    np_frames = run(tiny_pipe, frames=5, output_type="np")
    pt = run(tiny_pipe, frames=5, output_type="pt")
    assert len(pil) == 1 and len(pil[0]) == 5 and isinstance(pil[0][0], PIL.Image.Image)
    assert pil[0][0].size == (48, 64)
    assert np_frames.shape == (1, 5, 64, 48, 3) and np_frames.dtype == np.float32
    assert pt.shape == (1, 5, 3, 64, 48)
    np.testing.assert_allclose(pt.permute(0, 1, 3, 4, 2).numpy(), np_frames, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0][2]), (np_frames[0, 2] * 255).round().astype(np.uint8))


def to_uint8(frames):
    """The conversion the studio applied to the "np" output before "uint8" existed."""
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.slow  # several full pipeline runs
def test_uint8_output_is_the_np_output_converted_one_video_at_a_time(tiny_pipe, monkeypatch):
    kwargs = dict(frames=5, height=32, width=32, prompt=["a man in red", "a woman in blue"])
    np_frames = run(tiny_pipe, output_type="np", **kwargs)
    processed = []
    postprocess = tiny_pipe.video_processor.postprocess

    def spy(image, output_type="pil", **rest):
        processed.append((tuple(image.shape), output_type))
        return postprocess(image, output_type, **rest)

    def whole_batch(*args, **rest):
        raise AssertionError("uint8 output must not build the float video of the whole batch")

    monkeypatch.setattr(tiny_pipe.video_processor, "postprocess", spy)
    monkeypatch.setattr(tiny_pipe.video_processor, "postprocess_video", whole_batch)
    video = run(tiny_pipe, output_type="uint8", **kwargs)
    assert video.shape == (2, 5, 32, 32, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, to_uint8(np_frames))
    assert np.abs(video[0].astype(int) - video[1]).mean() > 0
    # denormalised on the device one video (T frames) at a time, like "np" does per video
    assert processed == [((5, 3, 32, 32), "pt")] * 2


def test_uint8_tensor_conversion_is_the_numpy_one():
    x = torch.rand(2, 5, 7, 3, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    x[0, 0, :4, 0] = torch.tensor([0.5, 1.5 / 255, 2.5 / 255, 1.0])  # rounding ties go to even
    converted = frames_to_uint8_tensor(x)
    assert converted.dtype == torch.uint8
    np.testing.assert_array_equal(converted.numpy(), to_uint8(x.numpy()))
    assert converted[0, 0, :4, 0].tolist() == [128, 2, 2, 255]


@pytest.mark.slow  # several full pipeline runs
def test_pose_as_list_of_images_equals_tensor(tiny_pipe):
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 255, (64, 48, 3), dtype=np.uint8) for _ in range(5)]
    as_tensor = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    from_list = run(tiny_pipe, frames=5, pose_video=[PIL.Image.fromarray(f) for f in frames])
    from_tensor = run(tiny_pipe, frames=5, pose_video=as_tensor)
    np.testing.assert_array_equal(from_list, from_tensor)


@pytest.mark.slow  # several full pipeline runs
def test_prompt_batch_gives_one_video_per_prompt(tiny_pipe):
    video = run(tiny_pipe, frames=5, prompt=["a man in red", "a woman in blue"])
    assert video.shape[0] == 2
    assert np.abs(video[0] - video[1]).mean() > 0


@pytest.mark.slow  # full pipeline runs
def test_callback_sees_every_step_and_can_interrupt(tiny_pipe):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        if step == 1:
            pipe._interrupt = True
        return {}

    run(tiny_pipe, frames=5, num_inference_steps=4, callback_on_step_end=callback)
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] > seen[1][1]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(height=60, width=48), "multiples of 16"),
        (dict(num_frames=8), "4k\\+1"),
        (dict(num_frames=13), "pose video has 9 frames"),
        (dict(prompt=[]), "empty list"),
        (dict(output_type="gif"), "output_type"),
        (dict(height=96, width=48), "positional grid"),
        (dict(pose_video=torch.rand(9, 3, 64, 48) * 4), "\\[-1, 1\\]"),
        (dict(pose_video=torch.rand(9, 64, 48)), "pose_video tensor"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_fix(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_pipe, **kwargs)


@pytest.mark.slow  # full pipeline runs
def test_pose_video_of_another_size_is_resized(tiny_pipe):
    video = run(tiny_pipe, frames=5, pose_video=make_pose(5, 32, 24), height=64, width=48)
    assert video.shape == (1, 5, 64, 48, 3)


def test_unknown_variant_is_a_value_error(tiny_weights):
    with pytest.raises(ValueError, match="mask_background"):
        DynamiCtrlPipeline.from_pretrained(weights.BASE_REPO, variant="mask_hair", weights_dir=tiny_weights)


@pytest.mark.slow  # full pipeline runs
@pytest.mark.parametrize(
    "variant,folder", [("mask_background", "Dynamictrl-Mask_B01"), ("mask_clothing", "Dynamictrl-Mask_C01")]
)
def test_variant_swaps_only_the_transformer(tiny_pipe, tiny_weights, variant, folder):
    from safetensors.torch import load_file as load

    pipe = DynamiCtrlPipeline.from_pretrained(weights.BASE_REPO, variant=variant, weights_dir=tiny_weights)
    pipe.set_progress_bar_config(disable=True)
    released = load(tiny_weights / folder / "diffusion_pytorch_model.safetensors")
    for key, value in pipe.transformer.state_dict().items():
        torch.testing.assert_close(value, released[key])
    for name in ("vae", "text_encoder"):
        for a, b in zip(getattr(pipe, name).parameters(), getattr(tiny_pipe, name).parameters()):
            torch.testing.assert_close(a, b)
    assert np.abs(run(pipe, frames=5) - run(tiny_pipe, frames=5)).mean() > 1e-5


@pytest.mark.slow  # full pipeline runs
def test_bf16_runs(tiny_weights):
    pipe = DynamiCtrlPipeline.from_pretrained(
        "gulucaptain/DynamiCtrl", weights_dir=tiny_weights, torch_dtype=torch.bfloat16
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    video = run(pipe, frames=5, height=32, width=32)
    assert np.isfinite(video).all()
    # bf16 decodes are denormalised in bf16 for "np"; "uint8" must do the same to match
    np.testing.assert_array_equal(run(pipe, frames=5, height=32, width=32, output_type="uint8"), to_uint8(video))


def test_image_list_poses_stay_uint8_until_used(tiny_pipe):
    frames = [np.full((16, 16, 3), 255, np.uint8), np.zeros((16, 16, 3), np.uint8)]
    video = tiny_pipe.pose_video_to_tensor(frames)
    assert video.dtype == torch.uint8 and video.shape == (1, 2, 3, 16, 16)
    from dynamictrl.pipeline import pose_in_unit_range

    unit = pose_in_unit_range(video)
    assert unit.dtype == torch.float32 and unit[0, 0].min() == 1 and unit[0, 1].max() == -1


@pytest.mark.slow  # full pipeline runs
def test_windowed_run_from_image_list_equals_tensor(tiny_pipe):
    rng = np.random.default_rng(9)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(13)]
    as_tensor = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    kwargs = dict(frames=13, height=32, width=32, window_frames=9, overlap_frames=1)
    np.testing.assert_array_equal(
        run(tiny_pipe, pose_video=frames, **kwargs), run(tiny_pipe, pose_video=as_tensor, **kwargs)
    )


def test_pose_strength_in_the_pipeline(tiny_pipe):
    """1.0 is bitwise today's video; 0 ignores the pose video; out of range is refused."""
    rng = np.random.default_rng(3)
    image = PIL.Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    poses = [list(rng.integers(0, 255, (9, 64, 48, 3), dtype=np.uint8)) for _ in range(2)]

    def run(pose, **kwargs):
        return tiny_pipe(
            image=image,
            pose_video=pose,
            prompt="a dancer",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(7),
            output_type="np",
            **kwargs,
        ).frames

    default = run(poses[0])
    assert np.array_equal(run(poses[0], pose_strength=1.0), default)
    ignored = run(poses[0], pose_strength=0.0)
    assert np.array_equal(ignored, run(poses[1], pose_strength=0.0))
    assert not np.array_equal(ignored, default)
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(ValueError, match=r"pose_strength must be (0\.\.2|a finite number), got"):
            run(poses[0], pose_strength=bad)
