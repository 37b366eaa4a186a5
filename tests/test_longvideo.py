import tracemalloc

import numpy as np
import pytest
import torch

from dynamictrl import longvideo
from dynamictrl.longvideo import (
    FrameStitcher,
    frames_to_uint8,
    lab_statistics,
    latent_fusion_weights,
    match_color,
    pixel_fusion_weights,
    plan_windows,
)
from dynamictrl.video import read_video, write_video
from tests.test_pipeline import make_image, make_pose, run

LAYOUTS = [
    # (num_frames, window_frames, overlap latents)
    (37, 37, 2),
    (41, 37, 2),  # one latent past one window
    (73, 37, 2),  # 18 driving latents: 0-9, 7-16, 8-17 (last shifted back)
    (65, 37, 2),  # divides: 0-9, 7-16
    (161, 37, 3),
    (961, 37, 2),  # 60 s at 16 fps
    (29, 17, 2),
    (33, 17, 0),
    (101, 13, 1),
    (45, 9, 1),  # stride 1
]


@pytest.mark.parametrize("num_frames,window_frames,overlap", LAYOUTS)
def test_windows_cover_every_frame_with_the_configured_overlap(num_frames, window_frames, overlap):
    plan = plan_windows(num_frames, window_frames, overlap)
    windows = plan.windows
    assert plan.driving_latents == (num_frames - 1) // 4
    # every window is a full, trained-length clip unless the whole clip is shorter
    assert all(w.stop - w.start == min(plan.driving_latents, (window_frames - 1) // 4) for w in windows)
    assert windows[0].start == 0 and windows[-1].stop == plan.driving_latents
    assert [w.index for w in windows] == list(range(len(windows)))
    covered = np.zeros(plan.driving_latents, dtype=int)
    for w in windows:
        covered[w.start : w.stop] += 1
    assert (covered >= 1).all()
    overlaps = plan.overlaps()
    assert all(o == overlap for o in overlaps[:-1])
    if overlaps:
        assert overlaps[-1] >= overlap  # the last window is shifted back when lengths do not divide
        assert overlaps[-1] < plan.window_latents  # ... but it always adds new frames
    # pixel frames: frame 0 is the reference; every other frame belongs to some window
    pixels = set()
    for w in windows:
        assert plan.pixel_frames(w)[0] == 0 and len(plan.pixel_frames(w)) == min(window_frames, num_frames)
        pixels.update(w.frames)
    assert pixels == set(range(1, num_frames))
    # as few windows as the stride allows
    stride = plan.window_latents - overlap
    assert len(windows) == 1 or (len(windows) - 2) * stride + plan.window_latents < plan.driving_latents


def test_last_window_is_shifted_back_when_lengths_do_not_divide():
    plan = plan_windows(73, 37, 2)
    assert [(w.start, w.stop) for w in plan.windows] == [(0, 9), (7, 16), (9, 18)]
    assert plan.overlaps() == [2, 7]
    assert plan.windows[-1].frames == range(37, 73)


def test_a_clip_that_fits_one_window_has_one_window():
    assert plan_windows(13, 37, 2).num_windows == 1
    assert plan_windows(37, 37, 2).num_windows == 1
    assert plan_windows(41, 37, 2).num_windows == 2


@pytest.mark.parametrize(
    "num_frames,window_frames,overlap,message",
    [(40, 37, 2, "4k\\+1"), (73, 36, 2, "window_frames"), (73, 1, 0, "window_frames"), (73, 37, 9, "overlap_frames")],
)
def test_bad_window_options_are_value_errors(num_frames, window_frames, overlap, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(num_frames, window_frames, overlap)


@pytest.mark.parametrize("num_frames,window_frames,overlap", LAYOUTS)
def test_fusion_weights_sum_to_one_everywhere(num_frames, window_frames, overlap):
    plan = plan_windows(num_frames, window_frames, overlap)
    for weights, scale in ((latent_fusion_weights(plan), 1), (pixel_fusion_weights(plan), 4)):
        total = np.zeros(plan.driving_latents * scale)
        for w, weight in zip(plan.windows, weights):
            assert weight.shape == (scale * (w.stop - w.start),)
            assert (weight > 0).all() and (weight <= 1 + 1e-12).all()
            total[scale * w.start : scale * w.stop] += weight
        np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_fusion_weights_are_a_linear_ramp_across_the_overlap():
    plan = plan_windows(65, 37, 2)  # two windows sharing latents 7 and 8
    first, second = latent_fusion_weights(plan)
    np.testing.assert_allclose(first[-2:], [2 / 3, 1 / 3])
    np.testing.assert_allclose(second[:2], [1 / 3, 2 / 3])
    assert (first[:-2] == 1).all() and (second[2:] == 1).all()


def smooth_clip(frames=6, height=24, width=20, seed=0):
    """Blocky random colours that move (roll) from frame to frame: the colour statistics of
    every frame are the same, as for a person dancing in front of a fixed background."""
    rng = np.random.default_rng(seed)
    base = 0.2 + 0.6 * rng.random((height // 4, width // 4, 3)).repeat(4, 0).repeat(4, 1)
    return np.stack([np.roll(base, t, axis=1) for t in range(frames)]).astype(np.float32)


def test_colour_matching_moves_a_shifted_clip_back_to_the_reference_statistics():
    reference = smooth_clip(seed=1)
    shifted = np.clip(reference * np.array([0.75, 0.9, 1.1]) + np.array([0.08, -0.03, 0.02]), 0, 1).astype(np.float32)
    target_mean, target_std = lab_statistics(reference)
    before_mean, _ = lab_statistics(shifted)
    matched = match_color(shifted, target_mean, target_std)
    after_mean, after_std = lab_statistics(matched)
    assert matched.shape == shifted.shape and matched.dtype == np.float32
    assert matched.min() >= 0 and matched.max() <= 1
    assert np.abs(before_mean - target_mean).max() > 3  # a visible shift (LAB units)
    np.testing.assert_allclose(after_mean, target_mean, atol=0.5)
    np.testing.assert_allclose(after_std, target_std, rtol=0.05, atol=0.3)
    assert np.abs(matched - reference).mean() < 0.5 * np.abs(shifted - reference).mean()


def test_stitcher_cross_fades_windows_back_into_the_clip():
    plan = plan_windows(29, 17, 2)
    clip = smooth_clip(frames=29, height=8, width=8)[None]
    stitcher = FrameStitcher(plan, batch=1, height=8, width=8, color_match=False)
    for w in plan.windows:
        stitcher.add(w, clip[:, plan.pixel_frames(w)])
    np.testing.assert_allclose(stitcher.frames, clip, atol=1e-6)


def test_stitcher_colour_matches_later_windows_to_the_first():
    plan = plan_windows(29, 17, 2)
    clip = smooth_clip(frames=29, height=16, width=16, seed=3)[None]
    stitcher = FrameStitcher(plan, batch=1, height=16, width=16, color_match=True)
    unmatched = FrameStitcher(plan, batch=1, height=16, width=16, color_match=False)
    for w in plan.windows:
        frames = clip[:, plan.pixel_frames(w)]
        if w.index > 0:  # later windows drift in colour
            frames = np.clip(frames * (1 - 0.1 * w.index) + 0.05 * w.index, 0, 1)
        stitcher.add(w, frames)
        unmatched.add(w, frames)
    assert np.abs(stitcher.frames - clip).mean() < 0.25 * np.abs(unmatched.frames - clip).mean()
    np.testing.assert_allclose(stitcher.frames[:, :9], clip[:, :9], atol=1e-6)  # window 0 is the reference


def to_uint8(frames):
    """The conversion the studio applied to the float output before the uint8 output existed."""
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def drifting_windows(plan, batch=2, size=8, seed=0):
    """Each window's decoded frames (slot-0 frame first), later windows drifting in colour."""
    clips = np.stack(
        [smooth_clip(frames=plan.num_frames, height=size, width=size, seed=seed + b) for b in range(batch)]
    )
    for w in plan.windows:
        frames = clips[:, plan.pixel_frames(w)]
        yield w, np.clip(frames * (1 - 0.07 * w.index) + 0.03 * w.index, 0, 1).astype(np.float32)


def stitch_in_one_float_clip(plan, windows, color_match):
    """The stitching as first written: every window accumulated into a zeroed float32 clip."""
    reference, clip = None, None
    for w, frames in windows:
        if clip is None:
            clip = np.zeros((frames.shape[0], plan.num_frames, *frames.shape[2:]), dtype=np.float32)
        if color_match:
            if reference is None:
                reference = [lab_statistics(c) for c in frames]
            else:
                frames = np.stack([match_color(c, *stats) for c, stats in zip(frames, reference)])
        if w.index == 0:
            clip[:, 0] = frames[:, 0]
        weight = pixel_fusion_weights(plan)[w.index].astype(np.float32)[None, :, None, None, None]
        clip[:, w.frames.start : w.frames.stop] += weight * frames[:, 1:]
    return clip


# (29, 13, 2): stride 1, so some frames are blended from three windows.
@pytest.mark.parametrize("layout", [(29, 17, 2), (29, 13, 2), (45, 9, 1), (13, 13, 1)])
@pytest.mark.parametrize("color_match", [True, False])
def test_stitcher_float_and_uint8_frames_are_the_bits_of_one_float_clip(layout, color_match):
    plan = plan_windows(*layout)
    expected = stitch_in_one_float_clip(plan, drifting_windows(plan), color_match)
    as_float = FrameStitcher(plan, batch=2, height=8, width=8, color_match=color_match)
    as_uint8 = FrameStitcher(plan, batch=2, height=8, width=8, color_match=color_match, dtype=np.uint8)
    for w, frames in drifting_windows(plan):
        as_float.add(w, frames)
        as_uint8.add(w, frames)
    assert as_float.frames.dtype == np.float32 and as_uint8.frames.dtype == np.uint8
    assert as_uint8.frames.shape == (2, plan.num_frames, 8, 8, 3)
    np.testing.assert_array_equal(as_float.frames, expected)
    np.testing.assert_array_equal(as_uint8.frames, to_uint8(expected))
    assert len(np.unique(as_uint8.frames)) > 20  # real images, not a constant


def test_frames_to_uint8_clips_and_rounds_half_to_even():
    values = np.array([-0.5, 0.0, 0.5, 1.5 / 255, 2.5 / 255, 1.0, 1.25], dtype=np.float32)
    np.testing.assert_array_equal(frames_to_uint8(values), [0, 0, 128, 2, 2, 255, 255])
    rng = np.random.default_rng(0)
    frames = rng.uniform(-0.1, 1.1, (3, 4, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(frames_to_uint8(frames), to_uint8(frames))
    out = np.zeros(frames.shape, np.uint8)
    scratch = frames.copy()
    assert frames_to_uint8(scratch, out=out, overwrite_input=True) is out
    np.testing.assert_array_equal(out, to_uint8(frames))
    assert frames_to_uint8(frames).dtype == np.uint8 and frames.min() < 0  # the input is left alone by default


def test_stitcher_keeps_only_the_pending_overlap_in_float():
    plan = plan_windows(73, 37, 2)  # windows 0-9, 7-16, 9-18: overlaps of 2 and 7 latents
    stitcher = FrameStitcher(plan, batch=2, height=8, width=8, dtype=np.uint8)
    assert stitcher.frames.dtype == np.uint8 and stitcher.frames.nbytes == 2 * 73 * 8 * 8 * 3
    overlaps = plan.overlaps() + [0]
    for (w, frames), overlap in zip(drifting_windows(plan), overlaps):
        stitcher.add(w, frames)
        float_arrays = {
            name: value
            for name, value in vars(stitcher).items()
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim > 1
        }
        if overlap:
            assert list(float_arrays) == ["pending"]
            assert stitcher.pending.shape == (2, 4 * overlap, 8, 8, 3)
            assert stitcher.pending_start == plan.windows[w.index + 1].frames.start
        else:
            assert float_arrays == {} and stitcher.pending is None and stitcher.done


def test_stitching_a_long_clip_to_uint8_peaks_at_one_byte_per_value_plus_a_few_windows():
    plan = plan_windows(401, 17, 2)  # 49 windows
    size, batch = 48, 1
    window_floats = batch * (plan.window_frames) * size * size * 3 * 4
    uint8_clip = batch * plan.num_frames * size * size * 3
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        stitcher = FrameStitcher(plan, batch=batch, height=size, width=size, dtype=np.uint8)
        for w in plan.windows:
            stitcher.add(w, rng.random((batch, plan.window_frames, size, size, 3), dtype=np.float32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stitcher.done and stitcher.frames.min() < 10 and stitcher.frames.max() > 245
    # A float32 clip alone would be 4 * uint8_clip (11 MB here, against this bound of 6.4 MB).
    assert peak < uint8_clip + 8 * window_floats, (peak, uint8_clip, window_floats)


def test_stitcher_wants_windows_in_order_and_a_supported_dtype():
    plan = plan_windows(29, 17, 2)
    windows = dict(drifting_windows(plan, batch=1))
    stitcher = FrameStitcher(plan, batch=1, height=8, width=8)
    with pytest.raises(ValueError, match="in order"):
        stitcher.add(plan.windows[1], windows[plan.windows[1]])
    with pytest.raises(ValueError, match="float32 or uint8"):
        FrameStitcher(plan, batch=1, height=8, width=8, dtype=np.float64)


def test_reinit_noise_mixes_reference_low_frequencies_into_fresh_noise(tiny_pipe):
    noise = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    image = torch.zeros_like(noise)
    image[:, 0] = 3.0
    a = longvideo.reinit_noise(noise, image, tiny_pipe.scheduler, torch.Generator().manual_seed(1))
    b = longvideo.reinit_noise(noise, image, tiny_pipe.scheduler, torch.Generator().manual_seed(1))
    c = longvideo.reinit_noise(noise, image, tiny_pipe.scheduler, torch.Generator().manual_seed(2))
    assert a.shape == noise.shape and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().mean() > 1e-3
    mask = longvideo.gaussian_low_pass((4, 4, 4))
    # the all-pass / all-stop masks give back one source exactly
    torch.testing.assert_close(longvideo.freq_mix(noise, image, torch.ones(4, 4, 4)), noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(longvideo.freq_mix(noise, image, torch.zeros(4, 4, 4)), image, atol=1e-5, rtol=0)
    assert mask.max() == 1.0 and mask.min() > 0


# ------------------------------------------------------------------ through the pipeline
@pytest.mark.parametrize("frames,window_frames", [(13, 37), (9, 13), (17, 17), (5, 13)])
@pytest.mark.parametrize("output_type", ["np", "latent"])
def test_a_clip_that_fits_one_window_is_bitwise_the_plain_pipeline(tiny_pipe, frames, window_frames, output_type):
    plain = run(tiny_pipe, frames=frames, height=32, width=32, seed=7, output_type=output_type)
    windowed = run(
        tiny_pipe, frames=frames, height=32, width=32, seed=7, output_type=output_type, window_frames=window_frames
    )
    if output_type == "latent":
        assert torch.equal(plain, windowed)
    else:
        np.testing.assert_array_equal(plain, windowed)


def test_a_clip_that_fits_one_window_gives_the_plain_uint8_video(tiny_pipe):
    kwargs = dict(frames=9, height=32, width=32, seed=7, output_type="uint8")
    plain = run(tiny_pipe, **kwargs)
    windowed = run(tiny_pipe, window_frames=13, **kwargs)
    assert plain.dtype == np.uint8
    np.testing.assert_array_equal(plain, windowed)


@pytest.mark.slow  # several multi-window pipeline runs
def test_three_windows_in_uint8_are_the_float_clip_converted(tiny_pipe, monkeypatch):
    kwargs = dict(
        frames=29,
        height=32,
        width=32,
        window_frames=17,
        overlap_frames=2,
        seed=4,
        num_inference_steps=1,
        guidance_scale=1.0,
    )
    assert plan_windows(29, 17, 2).num_windows == 3
    float_clip = run(tiny_pipe, output_type="np", **kwargs)
    stitchers = []

    class Recorded(FrameStitcher):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            stitchers.append(self)

    monkeypatch.setattr(longvideo, "FrameStitcher", Recorded)
    video = run(tiny_pipe, output_type="uint8", **kwargs)
    assert video.shape == (1, 29, 32, 32, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, to_uint8(float_clip))
    # the clip was stitched straight into uint8 and returned without a copy
    (stitcher,) = stitchers
    assert stitcher.frames.dtype == np.uint8 and video is stitcher.frames and stitcher.pending is None


def test_three_windows_end_to_end_give_every_frame_and_a_playable_mp4(tiny_pipe, tmp_path):
    plan = plan_windows(29, 17, 2)
    assert plan.num_windows == 3
    steps, windows_seen, steps_seen = 2, [], []
    frames = run(
        tiny_pipe,
        frames=29,
        height=32,
        width=32,
        num_inference_steps=steps,
        window_frames=17,
        overlap_frames=2,
        callback_on_window_end=lambda pipe, step, window, total: windows_seen.append((step, window, total)),
        callback_on_step_end=lambda pipe, step, t, tensors: steps_seen.append(tuple(tensors["latents"].shape)) or {},
    )
    assert frames.shape == (1, 29, 32, 32, 3) and frames.dtype == np.float32
    assert np.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    assert windows_seen == [(s, w, 3) for s in range(steps) for w in range(3)]  # windows x steps
    # the clip's latents: 1 front padding (5 latents per window) + slot 0 + 7 driving latents
    assert steps_seen == [(1, 9, 4, 4, 4)] * steps
    path = write_video(tmp_path / "long.mp4", frames[0], fps=16)
    video = read_video(path)
    assert video.num_frames == 29 and video.size == (32, 32)
    assert np.abs(video.frames.astype(np.float32) / 255 - frames[0]).mean() < 0.1


@pytest.mark.slow  # several multi-window pipeline runs
def test_long_video_output_types_and_latents(tiny_pipe):
    kwargs = dict(frames=33, height=32, width=32, window_frames=13, overlap_frames=1, seed=3)
    latents = run(tiny_pipe, output_type="latent", **kwargs)
    assert latents.shape == (1, 9, 4, 4, 4)  # slot 0 + 8 driving latents, padding dropped
    np_frames = run(tiny_pipe, output_type="np", **kwargs)
    pt = run(tiny_pipe, output_type="pt", **kwargs)
    pil = run(tiny_pipe, output_type="pil", **kwargs)
    assert np_frames.shape == (1, 33, 32, 32, 3) and pt.shape == (1, 33, 3, 32, 32)
    np.testing.assert_array_equal(pt.permute(0, 1, 3, 4, 2).numpy(), np_frames)
    assert len(pil[0]) == 33 and pil[0][0].size == (32, 32)


@pytest.mark.slow  # several multi-window pipeline runs
def test_long_video_is_deterministic_and_seeded(tiny_pipe):
    kwargs = dict(frames=29, height=32, width=32, window_frames=17)
    a = run(tiny_pipe, seed=1, **kwargs)
    b = run(tiny_pipe, seed=1, **kwargs)
    c = run(tiny_pipe, seed=2, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-4


@pytest.mark.slow  # several multi-window pipeline runs
def test_windows_denoise_together(tiny_pipe):
    # Changing only the poses of the last window's own frames changes the first window's
    # frames too: the windows share slot 0 and the overlaps at every step (not stitched after).
    plan = plan_windows(29, 17, 2)
    pose = make_pose(29, 32, 32, seed=1)
    other = pose.clone()
    late = plan.windows[-1].frames.start + 4 * plan.overlaps()[-1]
    other[late:] = make_pose(29, 32, 32, seed=9)[late:]
    kwargs = dict(frames=29, height=32, width=32, window_frames=17, color_match=False)
    a = run(tiny_pipe, pose_video=pose, **kwargs)
    b = run(tiny_pipe, pose_video=other, **kwargs)
    assert np.abs(a[:, 1:9] - b[:, 1:9]).mean() > 0  # first window only


@pytest.mark.slow  # several multi-window pipeline runs
def test_batched_windows_match_one_window_at_a_time(tiny_pipe):
    # Colour matching is off: on the random tiny VAE it amplifies the float noise of batch-1
    # vs batch-3 matmuls (~3e-7 in the latents) about 80x; what is compared is the sampling.
    kwargs = dict(frames=29, height=32, width=32, window_frames=17, seed=5, color_match=False)
    one = run(tiny_pipe, window_batch_size=1, **kwargs)
    batched = run(tiny_pipe, window_batch_size=3, **kwargs)
    two = run(tiny_pipe, window_batch_size=2, **kwargs)
    np.testing.assert_allclose(batched, one, atol=1e-5)
    np.testing.assert_allclose(two, one, atol=1e-5)


@pytest.mark.slow  # several multi-window pipeline runs
def test_colour_matching_and_reinit_options_change_the_output(tiny_pipe):
    kwargs = dict(frames=29, height=32, width=32, window_frames=17, seed=5)
    base = run(tiny_pipe, **kwargs)
    assert np.abs(run(tiny_pipe, color_match=False, **kwargs) - base).mean() > 0
    reinit = run(tiny_pipe, reinit_noise=True, **kwargs)
    assert np.abs(reinit - base).mean() > 1e-5
    np.testing.assert_array_equal(reinit, run(tiny_pipe, reinit_noise=True, **kwargs))


@pytest.mark.slow  # several pipeline runs
def test_reinit_noise_works_on_the_plain_path_and_is_off_by_default(tiny_pipe):
    plain = run(tiny_pipe, frames=13, height=32, width=32)
    assert np.abs(run(tiny_pipe, frames=13, height=32, width=32, reinit_noise=True) - plain).mean() > 1e-5
    np.testing.assert_array_equal(run(tiny_pipe, frames=13, height=32, width=32, reinit_noise=False), plain)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(window_frames=16), "window_frames"),
        (dict(window_frames=17, overlap_frames=4), "overlap_frames"),
        (dict(window_frames=17, window_batch_size=0), "window_batch_size"),
        (dict(window_frames=17, latents=torch.zeros(1, 3, 4, 4, 4)), "latents"),
    ],
)
def test_bad_long_video_options_are_value_errors(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_pipe, frames=29, height=32, width=32, **kwargs)


@pytest.mark.slow  # several multi-window pipeline runs
def test_an_image_of_another_size_and_a_prompt_batch_work_in_windows(tiny_pipe):
    video = run(
        tiny_pipe,
        frames=29,
        height=32,
        width=48,
        window_frames=17,
        image=make_image(40, 40),
        prompt=["a man in red", "a woman in blue"],
        output_type="np",
    )
    assert video.shape == (2, 29, 32, 48, 3)
    assert np.abs(video[0] - video[1]).mean() > 0
