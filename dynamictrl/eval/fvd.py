"""Video metrics: FID-VID and FVD, Fréchet distances between clip features.

Both follow DisCo's `tool/metrics/metric_center.py` (the code behind the published TikTok
FID-VID/FVD numbers):

- FID-VID ("FVD-3DRN50" there): 3D ResNet-50 of Hara et al. trained on Kinetics-400
  (`resnet-50-kinetics.pth`, shortcut B), 2048-d pooled features before the classifier;
  each frame resized to 112x112 (PIL bicubic in float, per channel, no rounding) and the
  Kinetics mean (114.7748, 107.7354, 99.4750) subtracted, no scaling.
- FVD ("FVD-3DInception" there): Inception-I3D (Carreira & Zisserman) on Kinetics-400 in
  the PyTorch port used by VideoGPT, MCVD and DisCo (`i3d_pretrained_400.pt`); the 400
  logits averaged over time; frames resized to 224x224 the same way and scaled to [-1, 1].

A sample is one clip of `clip_length` consecutive frames (16, DisCo's GIFs); the distance
is between the Gaussian fits (mean, unbiased covariance) of all prediction clips and all
ground-truth clips. Both networks are written here with the state-dict layout of those
checkpoints (no maintained package ships either one with these weights), and any module
that maps (N, 3, T, H, W) to (N, D) can stand in for them: that is how the tests run the
same statistics and distance code on a tiny random 3D-conv network.
"""

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

CLIP_LENGTH = 16
KINETICS_MEAN = (114.7748, 107.7354, 99.4750)  # Hara et al.'s mean, 0..255 RGB
FVD_SUBDIR = "fvd"  # weights/fvd/<official file name>
VIDEO_METRICS = ("fid-vid", "fvd")


# ---------------------------------------------------------------------------------------
# Fréchet distance


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (rows are samples), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"Fréchet statistics need at least 2 feature vectors, got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d² = |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½), the matrix root by scipy's `sqrtm`
    as in pytorch-fid, torch-fidelity and DisCo (a tiny ridge if the product is singular)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Feature sizes differ: {mu1.shape} vs {mu2.shape}.")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # With fewer samples than feature dimensions the product is singular by
        # construction; scipy's warning would repeat what the results' notes say.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"The Fréchet distance is ill-conditioned (imaginary part {np.abs(covmean.imag).max():.3g})."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


# ---------------------------------------------------------------------------------------
# Inception-I3D, parameter names of the PyTorch port (piergiaj/pytorch-i3d, VideoGPT, DisCo)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    # TensorFlow "SAME": the port reproduces the original graph's asymmetric padding.
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    t, h, w = x.shape[2:]
    pt, ph, pw = (_same_padding(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))


class Unit3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel=(1, 1, 1),
        stride=(1, 1, 1),
        activation: bool = True,
        batch_norm: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, stride=self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        # Zero padding (not -inf), as the port does; the inputs are post-ReLU, so >= 0.
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, widths[0])
        self.b1a = Unit3D(in_channels, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, widths[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D; `forward` returns the time-averaged class logits (N, classes),
    the FVD features of DisCo and VideoGPT."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionBlock(256, (128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionBlock(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionBlock(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionBlock(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionBlock(528, (256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionBlock(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(1024, num_classes, activation=False, batch_norm=False, bias=True)

    def forward(self, x):
        for name in (
            "Conv3d_1a_7x7",
            "MaxPool3d_2a_3x3",
            "Conv3d_2b_1x1",
            "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3",
            "Mixed_3b",
            "Mixed_3c",
            "MaxPool3d_4a_3x3",
            "Mixed_4b",
            "Mixed_4c",
            "Mixed_4d",
            "Mixed_4e",
            "Mixed_4f",
            "MaxPool3d_5a_2x2",
            "Mixed_5b",
            "Mixed_5c",
        ):
            x = getattr(self, name)(x)
        # The port averages 7x7 at 224 px (the whole map) then the logits over time; the
        # logits layer is linear, so pooling space here and time after is the same number.
        x = x.mean(dim=(3, 4), keepdim=True)
        return self.logits(x).mean(dim=(2, 3, 4))


# ---------------------------------------------------------------------------------------
# 3D ResNet-50 (Hara et al., "Can spatiotemporal 3D CNNs retrace the history of 2D CNNs
# and ImageNet?"), parameter names of their video-classification-3d-cnn-pytorch release


class Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + residual)


class ResNet3D50(nn.Module):
    """Returns the 2048-d average-pooled features (the release's `last_fc=False`); the
    400-way `fc` is kept so the checkpoint loads strictly."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=(3, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(64, 3, stride=1)
        self.layer2 = self._layer(128, 4, stride=2)
        self.layer3 = self._layer(256, 6, stride=2)
        self.layer4 = self._layer(512, 3, stride=2)
        self.fc = nn.Linear(2048, num_classes)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:  # shortcut "B": a projection
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes * 4),
            )
        layers = [Bottleneck3d(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck3d(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # The release pools with a fixed (ceil(T/16), ceil(S/32)^2) window, i.e. the whole
        # 1x4x4 map of a 16x112x112 clip; a global mean is that number.
        return x.mean(dim=(2, 3, 4))


# ---------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class WeightFile:
    filename: str
    url: str | None  # None: no direct link is published; the message says where to get it
    sha256: str | None  # None: no digest is published (the digest of the file used is recorded)
    origin: str

    def path(self, weights_dir=None) -> Path:
        from .. import weights

        return Path(weights_dir or weights.default_weights_dir()) / FVD_SUBDIR / self.filename


I3D_WEIGHTS = WeightFile(
    "i3d_pretrained_400.pt",
    # VideoGPT's file (Google Drive id 1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT; MCVD and DisCo use
    # the same one), mirrored in the Open-Sora-Plan space at a fixed commit.
    "https://huggingface.co/spaces/LanguageBind/Open-Sora-Plan-v1.0.0/resolve/"
    "810fa8c4bdb3a4c8eec9bd57375c29bde6fb46de/opensora/eval/fvd/videogpt/i3d_pretrained_400.pt",
    None,
    "VideoGPT/MCVD Inception-I3D, Kinetics-400 (Google Drive id 1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT)",
)
RESNET3D_WEIGHTS = WeightFile(
    "resnet-50-kinetics.pth",
    # Hara et al. publish it in a Google Drive folder (kenshohara/video-classification-3d-cnn-pytorch);
    # this is a GitHub-release copy of the same file name, the only direct link found.
    "https://github.com/yjh0410/YOWOF/releases/download/yowof-weight/resnet-50-kinetics.pth",
    None,
    "Hara et al. 3D ResNet-50, Kinetics-400 (kenshohara/video-classification-3d-cnn-pytorch)",
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_weight_file(spec: WeightFile, weights_dir=None, local_files_only: bool = False) -> Path:
    """weights/fvd/<file>: used if present, else downloaded (resumable) unless offline."""
    from http.client import HTTPException

    from .. import weights

    target = spec.path(weights_dir)
    if target.is_file():
        return target

    def missing(reason: str) -> "weights.WeightsNotFoundError":
        fix = (
            f"On a machine with internet access run:  curl -L --fail -o {target} '{spec.url}'"
            if spec.url
            else f"Copy {spec.filename} into {target.parent}."
        )
        return weights.WeightsNotFoundError(
            f"{spec.filename} ({spec.origin}) is not in {target.parent} and could not be downloaded ({reason}). {fix}"
        )

    if local_files_only or _offline():
        raise missing("offline mode is on")
    if spec.url is None:
        raise missing("no direct download link is published")
    try:
        return weights.download_url(spec.url, target, sha256=spec.sha256)
    except (OSError, ValueError, HTTPException) as error:  # URLError is an OSError; a cut stream an HTTPException
        raise missing(str(error)) from error


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which file, keep the cause
        raise ValueError(f"Could not read {path}: {error}. Delete it and fetch it again.") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # DataParallel checkpoints prefix every key with "module.".
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_strict(network: nn.Module, path: Path) -> None:
    try:
        network.load_state_dict(_load_state(path), strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the {type(network).__name__} layout: {error}") from error


# ---------------------------------------------------------------------------------------
# Clips -> features


def resize_float(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (T, size, size, 3) in 0..255: PIL bicubic on each channel
    in float mode, no rounding or clipping (clean-fid's resizer, which DisCo uses)."""
    frames = np.asarray(frames)
    out = np.empty((len(frames), size, size, 3), dtype=np.float32)
    for t, frame in enumerate(frames):
        for c in range(3):
            channel = Image.fromarray(np.ascontiguousarray(frame[:, :, c]).astype(np.float32))
            out[t, :, :, c] = np.asarray(channel.resize((size, size), Image.BICUBIC))
    return out


def clip_starts(num_frames: int, clip_length: int, stride: int) -> list[int]:
    return list(range(0, num_frames - clip_length + 1, stride))


@dataclass
class VideoBackbone:
    """A clip feature network with its input convention.

    `scaling`: "kinetics_mean" (x - KINETICS_MEAN, 0..255 scale; the 3D ResNet) or
    "signed" (x / 127.5 - 1; I3D)."""

    metric: str  # "fid-vid" | "fvd"
    network: nn.Module
    size: int
    scaling: str
    device: str = "cpu"
    weights: dict = field(default_factory=dict)
    batch_size: int = 8

    def __post_init__(self):
        if self.scaling not in ("kinetics_mean", "signed"):
            raise ValueError(f"scaling must be 'kinetics_mean' or 'signed', got {self.scaling!r}.")
        self.network = self.network.to(self.device).eval()

    def _normalize(self, clips: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(clips)  # (N, T, S, S, 3), 0..255
        if self.scaling == "kinetics_mean":
            tensor = tensor - torch.tensor(KINETICS_MEAN, dtype=torch.float32)
        else:
            tensor = tensor / 127.5 - 1.0
        return tensor.permute(0, 4, 1, 2, 3).contiguous()  # (N, 3, T, S, S)

    def features(self, frames: np.ndarray, clip_length: int, stride: int) -> np.ndarray:
        """One feature vector per clip of `clip_length` consecutive frames (starts every
        `stride` frames) of one video: (num_clips, D) float64."""
        starts = clip_starts(len(frames), clip_length, stride)
        if not starts:
            return np.zeros((0, 0))
        resized = resize_float(frames, self.size)
        out = []
        with torch.no_grad():
            for first in range(0, len(starts), self.batch_size):
                batch = np.stack([resized[s : s + clip_length] for s in starts[first : first + self.batch_size]])
                feats = self.network(self._normalize(batch).to(self.device))
                out.append(feats.reshape(len(batch), -1).double().cpu().numpy())
        return np.concatenate(out)


def fid_vid_backbone(weights_dir=None, device: str = "cpu", local_files_only: bool = False) -> VideoBackbone:
    """FID-VID: Hara's 3D ResNet-50 (Kinetics-400) at 112 px, Kinetics mean removed."""
    from .frames import sha256_of

    path = resolve_weight_file(RESNET3D_WEIGHTS, weights_dir, local_files_only)
    network = ResNet3D50()
    _load_strict(network, path)
    info = {"file": str(path), "sha256": sha256_of(path), "origin": RESNET3D_WEIGHTS.origin}
    return VideoBackbone("fid-vid", network, 112, "kinetics_mean", device=device, weights=info)


def fvd_backbone(weights_dir=None, device: str = "cpu", local_files_only: bool = False) -> VideoBackbone:
    """FVD: Inception-I3D (Kinetics-400) logits at 224 px, frames in [-1, 1]."""
    from .frames import sha256_of

    path = resolve_weight_file(I3D_WEIGHTS, weights_dir, local_files_only)
    network = InceptionI3d(400)
    _load_strict(network, path)
    info = {"file": str(path), "sha256": sha256_of(path), "origin": I3D_WEIGHTS.origin}
    return VideoBackbone("fvd", network, 224, "signed", device=device, weights=info)


def distance_between(pred_features: Iterable[np.ndarray], gt_features: Iterable[np.ndarray]) -> float:
    """Fréchet distance between the pooled clip features of all prediction and all
    ground-truth videos."""
    pred = np.concatenate([f for f in pred_features if len(f)])
    gt = np.concatenate([f for f in gt_features if len(f)])
    return frechet_from_features(pred, gt)
