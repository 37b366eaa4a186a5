"""Frame metrics: L1, SSIM, PSNR, PSNR* and LPIPS, each per frame pair.

They follow DisCo's `tool/metrics/ssim_l1_lpips_psnr.py`, the script behind the TikTok
numbers of DisCo, MagicAnimate, Champ and the papers that copy their tables (DynamiCtrl's
Table 2 among them), so that our numbers sit in the same columns:

- L1: mean |pred - gt| over pixels and channels in 0..255 units, divided once more by the
  pixel count H*W. It depends on the resolution, which is why the protocol fixes 256x256
  (the table reports it x 1e4, "L1 (E-04)").
- SSIM: scikit-image's `structural_similarity` with its defaults (7x7 uniform window,
  data range 255) on the 8-bit luma of OpenCV's RGB->GRAY conversion.
- PSNR: DisCo's formula evaluated in uint8, as its script did: the difference and its
  square wrap around modulo 256 (DisCo issue #86). Every published "PSNR" on TikTok comes
  from that code, so it is kept for comparison; it is not a true PSNR.
- PSNR*: the same formula in floating point (UniAnimate's "PSNR*", the corrected value).
  Both PSNRs give 100 dB for identical frames, as DisCo's function does.
- LPIPS: the `lpips` package (v0.1 linear layers, VGG-16 trunk), what DisCo calls. DisCo
  feeds it [0, 1] tensors although LPIPS expects [-1, 1]; `scaling="disco"` does the same
  (comparable numbers), `scaling="standard"` rescales to [-1, 1] first.
"""

import os
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FRAME_METRICS = ("l1", "ssim", "psnr", "psnr*", "lpips")
LPIPS_SCALINGS = ("disco", "standard")
PSNR_IDENTICAL_DB = 100.0  # DisCo's value for a zero error, kept so averages stay finite


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"Frame shapes differ: prediction {pred.shape}, ground truth {gt.shape}.")
    if pred.dtype != np.uint8 or gt.dtype != np.uint8 or pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(f"Frames must be uint8 (T, H, W, 3); got {pred.dtype} {pred.shape} and {gt.dtype} {gt.shape}.")
    return pred, gt


def prepare_frames(frames: np.ndarray, size: int, crop: str = "center") -> np.ndarray:
    """Frames as the metrics see them: `crop="center"` takes the centred square (what
    DisCo's evaluation transform does to TikTok frames), `crop="resize"` keeps the whole
    frame and squashes it; then a bilinear (antialiased) resize to size x size."""
    frames = np.asarray(frames)
    if crop not in ("center", "resize"):
        raise ValueError(f"crop must be 'center' or 'resize', got {crop!r}.")
    height, width = frames.shape[1:3]
    if (height, width) == (size, size):
        return frames
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    for index, frame in enumerate(frames):
        if crop == "center":
            frame = frame[top : top + side, left : left + side]
        out[index] = np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))
    return out


def l1_per_frame(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    pred, gt = _check_pair(pred, gt)
    height, width = pred.shape[1:3]
    diff = np.abs(pred.astype(np.float64) - gt.astype(np.float64))
    return diff.mean(axis=(1, 2, 3)) / (height * width)


def ssim_per_frame(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    import cv2
    from skimage.metrics import structural_similarity

    pred, gt = _check_pair(pred, gt)
    scores = []
    for a, b in zip(pred, gt):
        # OpenCV's fixed-point luma, as DisCo's cv2.cvtColor(..., COLOR_BGR2GRAY) on BGR input.
        gray_a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
        gray_b = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
        scores.append(structural_similarity(gray_a, gray_b, data_range=255))
    return np.asarray(scores, dtype=np.float64)


def _psnr_from_mse(mse: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        psnr = 20.0 * np.log10(255.0 / np.sqrt(mse))
    return np.where(mse == 0, PSNR_IDENTICAL_DB, psnr)


def psnr_disco_per_frame(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """DisCo's PSNR, overflow included: uint8 difference and square, both modulo 256."""
    pred, gt = _check_pair(pred, gt)
    wrapped = (pred - gt) ** 2  # uint8 arithmetic on purpose: this is what the published column measured
    return _psnr_from_mse(wrapped.mean(axis=(1, 2, 3), dtype=np.float64))


def psnr_star_per_frame(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """PSNR* (UniAnimate): the true PSNR of 8-bit frames, peak 255."""
    pred, gt = _check_pair(pred, gt)
    mse = ((pred.astype(np.float64) - gt.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return _psnr_from_mse(mse)


# ---------------------------------------------------------------------------------------
# LPIPS

# The linear layers ship inside the `lpips` wheel (lpips/weights/v0.1/vgg.pth). The VGG-16
# trunk is torchvision's ImageNet checkpoint, fetched into weights/lpips/ instead of
# torch.hub's cache so it sits with every other weight file of the project.
LPIPS_SUBDIR = "lpips"


def vgg16_checkpoint() -> tuple[str, str]:
    """(url, filename) of torchvision's VGG-16 ImageNet weights (what `lpips` loads)."""
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    return url, url.rsplit("/", 1)[-1]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_vgg16(weights_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> Path:
    """weights/lpips/vgg16-397923af.pth, downloaded from torchvision's URL if missing.

    torchvision names its files after the first 8 hex digits of their SHA-256; that prefix
    is checked after download (the full digest is not published)."""
    from http.client import HTTPException

    from .. import weights

    url, filename = vgg16_checkpoint()
    target = Path(weights_dir or weights.default_weights_dir()) / LPIPS_SUBDIR / filename
    if target.is_file():
        return target

    def missing(reason: str) -> "weights.WeightsNotFoundError":
        return weights.WeightsNotFoundError(
            f"The LPIPS VGG-16 trunk is not in {target} and could not be downloaded ({reason}). On a machine "
            f"with internet access run:  curl -L --fail -o {target} {url}"
        )

    if local_files_only or _offline():
        raise missing("offline mode is on")
    try:
        path = weights.download_url(url, target)
    except (OSError, HTTPException) as error:  # URLError is an OSError; a cut stream an HTTPException
        raise missing(str(error)) from error
    digest = sha256_of(path)
    prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    if not digest.startswith(prefix):
        path.unlink()
        raise ValueError(
            f"{url} arrived with SHA-256 {digest}, which does not start with {prefix}; the file was removed."
        )
    return path


@dataclass
class LpipsMetric:
    """LPIPS (VGG) as DisCo computes it; `scaling` picks how [0, 1] frames are fed."""

    model: object  # lpips.LPIPS
    device: str = "cpu"
    scaling: str = "disco"
    weights: dict | None = None  # what was loaded, for the results manifest
    batch_size: int = 16

    def __post_init__(self):
        if self.scaling not in LPIPS_SCALINGS:
            raise ValueError(f"LPIPS scaling must be one of {LPIPS_SCALINGS}, got {self.scaling!r}.")

    @staticmethod
    def _build():
        import lpips
        from lpips import pretrained_networks
        from torchvision.models import vgg

        class FeaturesOnly:
            """lpips only keeps `tv.vgg16(...).features`; building just those skips
            initialising the 120 M unused classifier weights (seconds on a CPU). The
            layers are torchvision's own configuration "D", i.e. VGG-16."""

            @staticmethod
            def vgg16(pretrained=False):
                return types.SimpleNamespace(features=vgg.make_layers(vgg.cfgs["D"], batch_norm=False))

        saved = pretrained_networks.tv
        pretrained_networks.tv = FeaturesOnly
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return lpips.LPIPS(pretrained=True, net="vgg", version="0.1", pnet_rand=True, verbose=False)
        finally:
            pretrained_networks.tv = saved

    @classmethod
    def from_pretrained(
        cls, weights_dir=None, device: str = "cpu", scaling: str = "disco", local_files_only: bool = False
    ) -> "LpipsMetric":
        """The real LPIPS-VGG: linear layers from the `lpips` wheel, VGG-16 trunk from
        torchvision's ImageNet checkpoint (weights/lpips/vgg16-397923af.pth)."""
        import torch

        path = resolve_vgg16(weights_dir, local_files_only)
        model = cls._build()
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_vgg_trunk(model, state)
        info = {"trunk": str(path), "trunk_sha256": sha256_of(path), "linear": "lpips package v0.1 vgg.pth"}
        return cls(model.to(device).eval(), device=device, scaling=scaling, weights=info)

    @classmethod
    def random(cls, device: str = "cpu", scaling: str = "disco", seed: int = 0) -> "LpipsMetric":
        """Same network with a random VGG trunk (the wheel's linear layers kept): runs the
        real code path without any download, for tests."""
        import torch

        torch.manual_seed(seed)
        model = cls._build()
        return cls(model.to(device).eval(), device=device, scaling=scaling, weights={"trunk": "random"})

    def __call__(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        import torch

        pred, gt = _check_pair(pred, gt)
        scores = []
        with torch.no_grad():
            for start in range(0, len(pred), self.batch_size):
                a = torch.from_numpy(pred[start : start + self.batch_size]).permute(0, 3, 1, 2).float().div(255.0)
                b = torch.from_numpy(gt[start : start + self.batch_size]).permute(0, 3, 1, 2).float().div(255.0)
                a, b = a.to(self.device), b.to(self.device)
                value = self.model(a, b, normalize=self.scaling == "standard")
                scores.append(value.reshape(-1).double().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)


def load_vgg_trunk(model, state: dict) -> None:
    """Copies torchvision VGG-16 `features.N.*` tensors into lpips' slice1..slice5."""
    import torch

    mapped = {}
    for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for name, _ in getattr(model.net, slice_name).named_parameters():
            source = f"features.{name}"
            if source not in state:
                raise ValueError(f"The VGG-16 checkpoint has no {source}: it is not torchvision's vgg16 file.")
            mapped[f"{slice_name}.{name}"] = state[source]
    with torch.no_grad():
        missing, unexpected = model.net.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ValueError(f"VGG-16 trunk mismatch: missing {missing}, unexpected {unexpected}.")


def frame_metrics(pred: np.ndarray, gt: np.ndarray, metrics=FRAME_METRICS, lpips: LpipsMetric | None = None) -> dict:
    """Per-frame values of each asked metric: {name: (T,) float64 array}."""
    functions = {
        "l1": l1_per_frame,
        "ssim": ssim_per_frame,
        "psnr": psnr_disco_per_frame,
        "psnr*": psnr_star_per_frame,
    }
    out = {}
    for name in metrics:
        if name == "lpips":
            if lpips is None:
                raise ValueError("LPIPS was asked for but no LPIPS network was given.")
            out[name] = lpips(pred, gt)
        elif name in functions:
            out[name] = functions[name](pred, gt)
        else:
            raise ValueError(f"Unknown frame metric {name!r}; use {', '.join(FRAME_METRICS)}.")
    return out


def sha256_of(path: str | os.PathLike) -> str:
    """Digest of a weight file, recorded with the results so runs can be traced to files."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
