"""Live previews: the fitted latent->RGB projection, its cache, and previews during a
tiny generation (which must not change the video)."""

import numpy as np
import pytest
import torch
from PIL import Image

from dynamictrl import preview as preview_module
from dynamictrl.preview import LatentRGBProjection, Preview, PreviewMaker, projection_for


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def projection(tiny_pipe, cache_dir):
    """Fitted once for the module; the studio test below reads it back from `cache_dir`."""
    return projection_for(tiny_pipe.vae, cache_dir)


def pooled_decode(vae, clip):
    """Held-out data: scaled latents and the decoded RGB pooled to the latent grid (first latent frame)."""
    with torch.no_grad():
        latents = vae.encode(clip[None]).latent_dist.mode()
        rgb = (vae.decode(latents).sample.float() / 2 + 0.5).clamp(0, 1)
    target = torch.nn.functional.adaptive_avg_pool2d(rgb[0, :, 0], latents.shape[-2:])
    return vae.config.scaling_factor * latents[:, :, :1].permute(0, 2, 1, 3, 4), target.permute(1, 2, 0)


def test_the_fitted_projection_predicts_the_decoded_colours(tiny_pipe, projection):
    clip = preview_module.synthetic_clips(1, 5, 64, seed=11)[0]  # not among the fitting clips (seed 0)
    latents, target = pooled_decode(tiny_pipe.vae, clip)
    predicted = torch.from_numpy(projection.project(latents)[0, 0]).float() / 255
    error = (predicted - target).pow(2).mean().sqrt()
    baseline = (target - target.mean(dim=(0, 1))).pow(2).mean().sqrt()  # the best single colour
    assert error < 0.75 * baseline, (float(error), float(baseline))
    assert len(projection.weight) == tiny_pipe.vae.config.latent_channels and projection.fit_rmse < 0.2


def test_projection_is_fitted_once_per_vae_and_cached_on_disk(tiny_pipe, projection, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(preview_module, "fit_projection", lambda vae: calls.append(vae) or projection)
    monkeypatch.setattr(preview_module, "_FITTED", preview_module.weakref.WeakKeyDictionary())
    first = projection_for(tiny_pipe.vae, tmp_path)
    assert projection_for(tiny_pipe.vae, tmp_path) is first and len(calls) == 1
    saved = list((tmp_path / "previews").glob("*.json"))
    assert len(saved) == 1 and LatentRGBProjection.from_json(saved[0].read_text()) == projection
    monkeypatch.setattr(preview_module, "_FITTED", preview_module.weakref.WeakKeyDictionary())
    assert projection_for(tiny_pipe.vae, tmp_path) == projection and len(calls) == 1  # read back, not refitted


def test_preview_maker_schedule_and_frames(projection):
    got = []
    maker = PreviewMaker(projection, got.append, every=2, steps=5, latent_frames=3)
    x0 = torch.randn(2, 4, len(projection.weight), 6, 5)  # one front padding frame, CFG-free batch of 2
    for step in range(5):
        maker(None, step, None, {"latents": x0, "pred_original_sample": x0})
    assert [p.step for p in got] == [2, 4, 5]
    assert got[0].frames.shape == (3, 6, 5, 3) and got[0].frames.dtype == np.uint8
    assert got[0].strip(max_frames=2).shape == (6, 10, 3)
    assert Image.open(__import__("io").BytesIO(got[0].png_bytes())).size == (15, 6)
    with pytest.raises(ValueError, match="preview_every must be >= 1"):
        PreviewMaker(projection, got.append, every=0, steps=5, latent_frames=3)


def test_previews_during_a_tiny_generation_leave_the_video_unchanged(
    tiny_weights, tmp_path, cache_dir, projection, monkeypatch
):
    from dynamictrl.studio import GenerateSettings, Studio
    from dynamictrl.video import write_video

    rng = np.random.default_rng(2)
    image = tmp_path / "ref.png"
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(image)
    pose = write_video(tmp_path / "pose.mp4", rng.integers(0, 255, (9, 64, 48, 3), dtype=np.uint8))
    # The studio loads its own pipeline: its VAE (same weights) finds the fitted projection on disk.
    monkeypatch.setattr(preview_module, "fit_projection", lambda vae: pytest.fail("fitted twice"))
    studio = Studio(weights_dir=tiny_weights, device="cpu", cache_dir=cache_dir)
    settings = GenerateSettings(prompt="a dancer", num_frames=9, width=48, height=64, steps=3, seed=4)
    previews: list[Preview] = []
    with_previews = studio.generate(
        image, tmp_path / "a.mp4", settings, pose_video_path=pose, preview=previews.append, preview_every=1
    )
    without = studio.generate(image, tmp_path / "b.mp4", settings, pose_video_path=pose)
    assert np.array_equal(with_previews.frames, without.frames)
    assert [p.step for p in previews] == [1, 2, 3] and all(p.steps == 3 for p in previews)
    assert previews[0].frames.shape == (3, 8, 6, 3)  # 9 frames -> 3 latent frames of 64/8 x 48/8
    assert not np.array_equal(previews[0].frames, previews[-1].frames)  # the estimate sharpens
