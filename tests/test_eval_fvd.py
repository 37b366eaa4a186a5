"""Fréchet distance, the FID-VID/FVD networks and their loaders, on random weights."""

import numpy as np
import pytest
import torch

from dynamictrl import weights
from dynamictrl.eval import fvd
from dynamictrl.testing.eval import moving_square_video, tiny_backbone


def reference_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Direct formula, the matrix square root by eigendecomposition (no scipy.sqrtm):
    Tr((S1 S2)^½) = Tr((S1^½ S2 S1^½)^½) for symmetric PSD S1, S2."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_frechet_distance_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    y = rng.normal(loc=0.7, size=(150, 6)) @ rng.normal(size=(6, 6))
    assert fvd.frechet_from_features(x, y) == pytest.approx(reference_frechet(x, y), rel=1e-8)


def test_frechet_distance_known_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 5))
    assert fvd.frechet_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    # Same covariance, shifted mean: exactly the squared shift.
    assert fvd.frechet_from_features(x + shift, x) == pytest.approx((shift**2).sum(), rel=1e-9)
    # Diagonal covariances: sum over dimensions of (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    d = fvd.frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b))
    assert d == pytest.approx(((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-9)


def test_frechet_distance_refuses_too_few_samples():
    with pytest.raises(ValueError, match="at least 2"):
        fvd.frechet_from_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="differ"):
        fvd.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_tiny_backbone_features_identical_zero_and_distortion_grows():
    video = moving_square_video(12, 32, 32, seed=4)
    rng = np.random.default_rng(5)
    backbone = tiny_backbone("fvd")
    clean = backbone.features(video, 4, 1)
    assert clean.shape == (9, 8)
    scores = []
    for sigma in (0, 10, 50):
        pred = np.clip(video + rng.normal(0, sigma, video.shape), 0, 255).astype(np.uint8)
        scores.append(fvd.frechet_from_features(backbone.features(pred, 4, 1), clean))
    assert scores[0] == pytest.approx(0.0, abs=1e-9)
    assert scores[0] < scores[1] < scores[2]


def test_clip_windows_and_input_scaling():
    assert fvd.clip_starts(20, 16, 1) == [0, 1, 2, 3, 4]
    assert fvd.clip_starts(20, 16, 2) == [0, 2, 4]
    assert fvd.clip_starts(15, 16, 1) == []

    class ChannelMeans(torch.nn.Module):
        def forward(self, x):  # (N, 3, T, S, S) -> what the network was fed, per channel
            return x.mean(dim=(2, 3, 4))

    grey = np.full((4, 20, 20, 3), 128, dtype=np.uint8)
    kinetics = fvd.VideoBackbone("fid-vid", ChannelMeans(), 8, "kinetics_mean").features(grey, 4, 1)
    np.testing.assert_allclose(kinetics[0], 128 - np.array(fvd.KINETICS_MEAN), rtol=1e-5)
    signed = fvd.VideoBackbone("fvd", ChannelMeans(), 8, "signed").features(grey, 4, 1)
    np.testing.assert_allclose(signed[0], [128 / 127.5 - 1] * 3, atol=1e-6)


def test_resize_is_float_bicubic_without_rounding():
    ramp = np.tile(np.arange(0, 250, 10, dtype=np.uint8)[None, :, None], (25, 1, 3))[None]
    out = fvd.resize_float(ramp, 12)
    assert out.dtype == np.float32 and out.shape == (1, 12, 12, 3)
    assert not np.allclose(out, np.round(out))  # kept in float, as clean-fid's resizer
    flat = fvd.resize_float(np.full((1, 9, 9, 3), 77, dtype=np.uint8), 5)
    np.testing.assert_allclose(flat, 77, atol=1e-4)


def test_same_padding_is_tensorflow_same():
    assert fvd._same_padding(224, 7, 2) == (2, 3)
    assert fvd._same_padding(16, 7, 2) == (2, 3)
    assert fvd._same_padding(112, 3, 1) == (1, 1)
    assert fvd._same_padding(7, 2, 2) == (0, 1)


def test_i3d_has_the_checkpoint_layout_and_runs():
    network = fvd.InceptionI3d(400).eval()
    shapes = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    # Names and shapes of the PyTorch I3D port (pytorch-i3d / VideoGPT / DisCo).
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_1a_7x7.bn.running_mean"] == (64,)
    assert shapes["Mixed_3b.b1b.conv3d.weight"] == (128, 96, 3, 3, 3)
    assert shapes["Mixed_4f.b3b.conv3d.weight"] == (128, 528, 1, 1, 1)
    assert shapes["Mixed_5c.b0.conv3d.weight"] == (384, 832, 1, 1, 1)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert not any(key.startswith("logits.bn") for key in shapes)
    # 12.7 M parameters: the ~50 MB of i3d_pretrained_400.pt.
    assert 12.5e6 < sum(p.numel() for p in network.parameters()) < 12.9e6
    assert network.Conv3d_1a_7x7.bn.eps == pytest.approx(1e-3)
    with torch.no_grad():
        logits = network(torch.randn(2, 3, 16, 64, 64))
    assert logits.shape == (2, 400) and torch.isfinite(logits).all()


def test_resnet3d50_has_the_checkpoint_layout_and_runs():
    network = fvd.ResNet3D50().eval()
    shapes = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1, 1)
    assert shapes["layer3.5.conv2.weight"] == (256, 256, 3, 3, 3)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert shapes["fc.weight"] == (400, 2048)
    assert "layer1.1.downsample.0.weight" not in shapes
    with torch.no_grad():
        features = network(torch.randn(1, 3, 16, 32, 32))
    assert features.shape == (1, 2048)


@pytest.mark.slow  # builds both video networks
def test_loaders_read_dataparallel_checkpoints_strictly(tmp_path):
    torch.manual_seed(0)
    original = fvd.InceptionI3d(400).eval()
    target = fvd.I3D_WEIGHTS.path(tmp_path)
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}}, target)
    backbone = fvd.fvd_backbone(tmp_path)
    assert backbone.size == 224 and backbone.scaling == "signed"
    assert backbone.weights["file"] == str(target) and len(backbone.weights["sha256"]) == 64
    clip = torch.randn(1, 3, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.network(clip), original(clip))

    resnet_target = fvd.RESNET3D_WEIGHTS.path(tmp_path)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, resnet_target)
    with pytest.raises(ValueError, match="resnet-50-kinetics.pth does not fit"):
        fvd.fid_vid_backbone(tmp_path)
    resnet_target.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="Could not read .*resnet-50-kinetics.pth"):
        fvd.fid_vid_backbone(tmp_path)


def test_missing_weights_offline_name_file_and_command(tmp_path):
    for loader, spec in ((fvd.fvd_backbone, fvd.I3D_WEIGHTS), (fvd.fid_vid_backbone, fvd.RESNET3D_WEIGHTS)):
        with pytest.raises(weights.WeightsNotFoundError) as error:
            loader(tmp_path)
        message = str(error.value)
        assert spec.filename in message and str(tmp_path / "fvd") in message and spec.url in message


def test_download_goes_through_weights_download_url(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, target, size=None, sha256=None):
        calls.append((url, target))
        torch.save(fvd.InceptionI3d(400).state_dict(), target)
        return target

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(weights, "download_url", fake_download)
    (tmp_path / "fvd").mkdir()
    backbone = fvd.fvd_backbone(tmp_path)
    assert calls == [(fvd.I3D_WEIGHTS.url, tmp_path / "fvd" / "i3d_pretrained_400.pt")]
    assert backbone.metric == "fvd"


def test_a_failed_download_says_why_and_how_to_fetch_by_hand(tmp_path, monkeypatch):
    def unreachable(url, target, size=None, sha256=None):
        raise OSError("Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(weights, "download_url", unreachable)
    with pytest.raises(weights.WeightsNotFoundError, match=r"\(Name or service not known\).*curl -L --fail -o"):
        fvd.fid_vid_backbone(tmp_path)


def test_download_all_evaluation_weights_into_their_folders(tmp_path, monkeypatch):
    from dynamictrl.eval import EvalModels

    fetched = []

    def fake_download(url, target, size=None, sha256=None):
        fetched.append(target.relative_to(tmp_path).as_posix())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        return target

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(weights, "download_url", fake_download)
    (tmp_path / "lpips").mkdir()
    (tmp_path / "lpips" / "vgg16-397923af.pth").write_bytes(b"present")  # kept, not fetched again
    paths = EvalModels.download(tmp_path)
    assert fetched == ["fvd/resnet-50-kinetics.pth", "fvd/i3d_pretrained_400.pt"]
    assert paths["lpips"] == tmp_path / "lpips" / "vgg16-397923af.pth" and paths["fvd"].is_file()
