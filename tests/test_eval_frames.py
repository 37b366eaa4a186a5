"""Frame metrics against reference implementations and known cases."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dynamictrl import weights
from dynamictrl.eval import frames as fm
from dynamictrl.testing.eval import moving_square_video, random_lpips


@pytest.fixture(scope="module")
def clip():
    return moving_square_video(5, 40, 32, seed=3)


def noisy(frames, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(np.float64) + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


def test_l1_is_disco_mean_abs_error_over_pixel_count():
    gt = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    pred = gt.copy()
    pred[0, 0, 0] = (12, 0, 0)  # one channel of one pixel off by 12
    # mean |diff| over 2*2*3 values = 1, divided again by H*W = 4
    assert fm.l1_per_frame(pred, gt)[0] == pytest.approx(1.0 / 4)


def test_l1_matches_direct_numpy(clip):
    pred = noisy(clip, 15)
    expected = [np.abs(p.astype(float) - g.astype(float)).mean() / (40 * 32) for p, g in zip(pred, clip)]
    np.testing.assert_allclose(fm.l1_per_frame(pred, clip), expected, rtol=1e-12)


def test_psnr_star_matches_scikit_image(clip):
    pred = noisy(clip, 12)
    expected = [peak_signal_noise_ratio(g, p, data_range=255) for p, g in zip(pred, clip)]
    np.testing.assert_allclose(fm.psnr_star_per_frame(pred, clip), expected, rtol=1e-10)


def test_disco_psnr_reproduces_the_uint8_overflow(clip):
    pred = noisy(clip, 12, seed=1)
    diff = pred.astype(np.int64) - clip.astype(np.int64)
    wrapped = ((diff % 256) ** 2) % 256  # what uint8 arithmetic computes
    expected = [20 * np.log10(255 / np.sqrt(w.mean())) for w in wrapped]
    np.testing.assert_allclose(fm.psnr_disco_per_frame(pred, clip), expected, rtol=1e-10)
    # Differences in 0..15 never wrap (15**2 < 256): there the two PSNRs agree.
    small = np.clip(clip.astype(int) + np.random.default_rng(2).integers(0, 16, clip.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(fm.psnr_disco_per_frame(small, clip), fm.psnr_star_per_frame(small, clip), rtol=1e-12)
    # Large errors: the overflowing formula reads far higher than the true PSNR.
    bad = noisy(clip, 60, seed=3)
    assert fm.psnr_disco_per_frame(bad, clip).mean() > fm.psnr_star_per_frame(bad, clip).mean() + 5


def test_ssim_matches_scikit_image_on_luma(clip):
    pred = noisy(clip, 20)
    luma = lambda f: np.round(f @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)  # noqa: E731
    expected = [structural_similarity(luma(g), luma(p), data_range=255) for p, g in zip(pred, clip)]
    # OpenCV's fixed-point luma may round a few pixels the other way.
    np.testing.assert_allclose(fm.ssim_per_frame(pred, clip), expected, atol=2e-3)


def test_identical_frames_give_the_ideal_values(clip):
    values = fm.frame_metrics(clip, clip, lpips=random_lpips())
    assert np.all(values["l1"] == 0)
    assert np.all(values["ssim"] == pytest.approx(1.0))
    assert np.all(values["psnr"] == 100.0) and np.all(values["psnr*"] == 100.0)
    assert np.all(values["lpips"] == pytest.approx(0.0, abs=1e-7))


def test_more_noise_moves_every_metric_the_wrong_way(clip):
    lpips = random_lpips()
    light = fm.frame_metrics(noisy(clip, 5), clip, lpips=lpips)
    heavy = fm.frame_metrics(noisy(clip, 40), clip, lpips=lpips)
    assert heavy["l1"].mean() > light["l1"].mean()
    assert heavy["ssim"].mean() < light["ssim"].mean()
    assert heavy["psnr*"].mean() < light["psnr*"].mean()
    assert heavy["lpips"].mean() > light["lpips"].mean()


def test_blur_lowers_ssim_and_raises_lpips(clip):
    from PIL import Image, ImageFilter

    blurred = np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(2))) for f in clip])
    assert fm.ssim_per_frame(blurred, clip).mean() < 0.95
    assert random_lpips()(blurred, clip).mean() > random_lpips()(clip, clip).mean()


@pytest.mark.slow  # LPIPS over frames, twice
def test_lpips_scalings_feed_the_network_as_documented(clip):
    pred = noisy(clip, 25)
    metric = random_lpips()
    a = torch.from_numpy(pred).permute(0, 3, 1, 2).float() / 255
    b = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        as_disco = metric.model(a, b).reshape(-1).numpy()  # [0, 1] straight in, as DisCo's script
        as_standard = metric.model(a * 2 - 1, b * 2 - 1).reshape(-1).numpy()
    np.testing.assert_allclose(metric(pred, clip), as_disco, rtol=1e-5)
    standard = fm.LpipsMetric(metric.model, scaling="standard")
    np.testing.assert_allclose(standard(pred, clip), as_standard, rtol=1e-5)
    assert not np.allclose(as_disco, as_standard)
    one_by_one = fm.LpipsMetric(metric.model, batch_size=1)
    np.testing.assert_allclose(one_by_one(pred, clip), metric(pred, clip), rtol=1e-5)


def test_vgg_trunk_is_copied_into_the_lpips_slices():
    import copy

    from torchvision.models import vgg16

    metric = random_lpips()
    model = copy.deepcopy(metric.model)
    torch.manual_seed(5)
    state = {f"features.{k}": v for k, v in vgg16().features.state_dict().items()}
    fm.load_vgg_trunk(model, state)
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "28").bias, state["features.28.bias"])
    assert not torch.equal(model.net.slice1[0].weight, metric.model.net.slice1[0].weight)
    del state["features.28.bias"]
    with pytest.raises(ValueError, match="features.28.bias"):
        fm.load_vgg_trunk(model, state)


def test_vgg_trunk_offline_names_the_file_and_the_command(tmp_path):
    with pytest.raises(weights.WeightsNotFoundError) as error:
        fm.resolve_vgg16(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "lpips" / "vgg16-397923af.pth") in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message


def test_vgg_trunk_download_with_a_wrong_digest_is_removed(tmp_path, monkeypatch):
    def fake_download(url, target, size=None, sha256=None):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not the vgg16 checkpoint")
        return target

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(weights, "download_url", fake_download)
    with pytest.raises(ValueError, match="397923af"):
        fm.resolve_vgg16(tmp_path)
    assert not (tmp_path / "lpips" / "vgg16-397923af.pth").exists()


def test_prepare_frames_centre_square_and_squash():
    frame = np.zeros((1, 40, 20, 3), dtype=np.uint8)
    frame[:, :10] = 255  # top quarter white: outside the centred 20x20 square
    frame[:, 30:] = 255  # bottom quarter white
    centre = fm.prepare_frames(frame, 10, "center")
    squash = fm.prepare_frames(frame, 10, "resize")
    assert centre.shape == squash.shape == (1, 10, 10, 3)
    assert centre.max() == 0  # only the black middle is kept
    assert squash[0, 0].min() == 255 and squash[0, 5].max() == 0
    same = np.random.default_rng(0).integers(0, 255, (2, 10, 10, 3), dtype=np.uint8)
    assert fm.prepare_frames(same, 10) is same


def test_frame_metrics_refuse_mismatched_frames(clip):
    with pytest.raises(ValueError, match="shapes differ"):
        fm.l1_per_frame(clip[:, :20], clip)
    with pytest.raises(ValueError, match="uint8"):
        fm.psnr_star_per_frame(clip.astype(np.float32), clip.astype(np.float32))
    with pytest.raises(ValueError, match="no LPIPS network"):
        fm.frame_metrics(clip, clip, metrics=("lpips",))


def test_from_pretrained_loads_a_torchvision_vgg16_file(tmp_path, clip):
    """The real loading path, with a random file in torchvision's format at the real name."""
    from torchvision.models import vgg

    torch.manual_seed(9)
    features = vgg.make_layers(vgg.cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # the real file has the classifier too: ignored
    target = tmp_path / "lpips" / "vgg16-397923af.pth"
    target.parent.mkdir()
    torch.save(state, target)
    metric = fm.LpipsMetric.from_pretrained(tmp_path, scaling="standard")
    assert torch.equal(getattr(metric.model.net.slice3, "10").weight, state["features.10.weight"])
    assert metric.weights["trunk"] == str(target) and metric.weights["trunk_sha256"] == fm.sha256_of(target)
    # The linear layers are the wheel's calibrated ones, not random: non-negative weights.
    assert all((lin.model[-1].weight >= 0).all() for lin in metric.model.lins)
    assert metric(clip, clip).max() == pytest.approx(0.0, abs=1e-7)
