"""Face parsing for MuseTalk's blend mask: BiSeNet (face-parsing.PyTorch, 19 CelebAMask-HQ
classes) and the region masks that decide which parsed pixels take the generated mouth.

The network is a clean reimplementation whose `state_dict()` matches the official
`79999_iter.pth` key for key, so that file loads strictly. Only the main head runs at
inference; the two auxiliary training heads exist so the checkpoint has somewhere to go.
"""

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.transforms import functional as TF

NUM_CLASSES = 19
PARSE_SIZE = 512
# CelebAMask-HQ label ids used by MuseTalk.
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14
MOUTH_CLASSES = (MOUTH, UPPER_LIP, LOWER_LIP)
REGION_MODES = ("jaw", "raw", "neck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- network
class ConvBNReLU(nn.Sequential):
    """Bias-free conv + batch norm + ReLU; the children are named `conv` and `bn` as upstream."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class AttentionRefinement(nn.Module):
    """Reweights channels by a sigmoid gate computed from their global average."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))).sigmoid()
        return feat * gate


class FeatureFusion(nn.Module):
    """Fuses the 1/8 backbone features with the context path: feat + feat * channel gate."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))).sigmoid()
        return feat + feat * gate


class OutputHead(nn.Sequential):
    """3x3 ConvBNReLU then a 1x1 classifier (no bias)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)


class ResNet18Trunk(ResNet):
    """torchvision's ResNet-18 minus its classifier, returning the 1/8, 1/16 and 1/32 features.

    Upstream writes its own ResNet-18, but its blocks and key names (conv1/bn1/conv2/bn2,
    downsample.0/.1 on the first block of layers 2-4) are torchvision's exactly.
    """

    def __init__(self):
        super().__init__(BasicBlock, [2, 2, 2, 2])
        # The checkpoint has no fc.* keys, so these must not exist for a strict load.
        del self.fc, self.avgpool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1/8 backbone features, 1/8 context features); the 1/16 context output only
        feeds an auxiliary training head, so it is not returned."""
        feat8, feat16, feat32 = self.resnet(x)
        # Upstream nearest-upsamples the 1x1 global context to 1/32; broadcasting adds the same values.
        global_context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        up32 = F.interpolate(self.arm32(feat32) + global_context, size=feat16.shape[-2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[-2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class BiSeNet(nn.Module):
    """face-parsing.PyTorch's BiSeNet (the spatial path replaced by ResNet 1/8 features).

    `forward` returns only the main logits (N, num_classes, H, W), upsampled bilinearly
    with align_corners=True to the input size as upstream does.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, num_classes)
        # Auxiliary training heads: kept for strict loading of the checkpoint, never run.
        self.conv_out16 = OutputHead(128, 64, num_classes)
        self.conv_out32 = OutputHead(128, 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------- loading + parsing
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Face-parsing weights not found: {path} (BiSeNet 79999_iter.pth of face-parsing.PyTorch)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors have no common base class
        raise ValueError(f"{path} is not a readable torch checkpoint: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, dict) else "dict holding non-tensors"
        raise ValueError(
            f"{path} is not a plain state dict of tensors (got a {kind}); expected BiSeNet's 79999_iter.pth."
        )
    return state


def _check_fits(path: Path, state: dict[str, torch.Tensor], net: nn.Module) -> None:
    """Raise one readable error before `load_state_dict` would raise a long one."""
    expected = net.state_dict()
    # torch itself fills in num_batches_tracked for checkpoints saved before it existed.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if items:
            shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
            problems.append(f"{len(items)} {label} ({shown})")
    if problems:
        raise ValueError(
            f"{path} does not fit BiSeNet face parsing ({len(state)} tensors, {len(expected)} expected): "
            + "; ".join(problems)
        )


class FaceParser:
    """BiSeNet with MuseTalk's pre-processing: RGB PIL images in, 512x512 class maps out."""

    def __init__(self, net: BiSeNet, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        # Channels-last: the convolutions run ~20% faster on CPU (measured, ResNet-18 at 512),
        # and the argmax over the class channel reads contiguous memory (13x faster than
        # across 19 planes). Moves between devices keep the format.
        self.net = net.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        # Read from the net: the model manager moves `net` itself between CPU and GPU.
        return next(self.net.parameters()).device

    @classmethod
    def from_file(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "FaceParser":
        path = Path(path)
        state = _read_state_dict(path)
        net = BiSeNet()
        _check_fits(path, state, net)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path} does not fit BiSeNet face parsing: {str(error)[:500]}") from error
        return cls(net, device, dtype)

    def to(self, device: str | torch.device) -> "FaceParser":
        self.net.to(device)
        return self

    def parameters(self):
        """The network's parameters, so the model manager treats the parser as a model."""
        return self.net.parameters()

    @staticmethod
    def preprocess(image: Image.Image) -> torch.Tensor:
        """(3, 512, 512) float32, ImageNet-normalised, as upstream's ToTensor + Normalize."""
        image = image.convert("RGB").resize((PARSE_SIZE, PARSE_SIZE), Image.Resampling.BILINEAR)
        return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)

    def parse(self, images: Sequence[Image.Image], batch_size: int = 8) -> np.ndarray:
        """(N, 512, 512) uint8 class ids (0..18) of the images, whatever their size."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        labels = np.zeros((len(images), PARSE_SIZE, PARSE_SIZE), dtype=np.uint8)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([self.preprocess(im) for im in images[start : start + batch_size]])
                logits = self.net(batch.to(self.device, self.dtype, memory_format=torch.channels_last))
                labels[start : start + len(batch)] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return labels


# ---------------------------------------------------------------------------- region masks
def jaw_dilation_kernel() -> np.ndarray:
    """MuseTalk v1.5's 33x33 dilation kernel: a cone (rows 10-20, centred runs of width
    1, 3, ..., 21) on a stem (rows 21-32, width 21). cv2.dilate does not mirror the kernel,
    so with the centre anchor a skin pixel grows 16 px up at full width and 6 px down to a
    point: the chin edge moves down by up to 6 px with 45-degree flanks."""
    size, cone_rows, center = 33, 21, 16
    kernel = np.zeros((size, size), dtype=np.uint8)
    for row in range(cone_rows // 2, cone_rows):
        half = row - cone_rows // 2
        kernel[row, center - half : center + half + 1] = 1
    kernel[cone_rows:, center - 10 : center + 11] = 1
    return kernel


_JAW_KERNEL = jaw_dilation_kernel()
# A 35x3 ellipse is one full row plus the centre pixel above and below: it erodes
# 17 px sideways and 1 px vertically per iteration.
_CHEEK_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))


def cheek_mask(left_cheek_width: int = 90, right_cheek_width: int = 90) -> np.ndarray:
    """(512, 512) uint8: 255 on the outer cheek columns [0, 256-left] and [256+right, 511]."""
    mask = np.zeros((PARSE_SIZE, PARSE_SIZE), dtype=np.uint8)
    center = PARSE_SIZE // 2
    # cv2.rectangle (inclusive corners, clipped), as upstream: a width of 256 still marks column 0.
    cv2.rectangle(mask, (0, 0), (center - left_cheek_width, PARSE_SIZE), 255, -1)
    cv2.rectangle(mask, (center + right_cheek_width, 0), (PARSE_SIZE, PARSE_SIZE), 255, -1)
    return mask


def region_mask(
    labels: np.ndarray, mode: str = "jaw", left_cheek_width: int = 90, right_cheek_width: int = 90
) -> np.ndarray:
    """(512, 512) uint8 {0, 255}: the parsed pixels that may take the generated face.

    raw: skin + mouth + lips (v1.0). neck: raw + neck. jaw (v1.5): skin dilated downwards
    over the chin; outside the central band of columns (the cheeks) the dilated skin is
    also eroded sideways so the blend stays off the face outline; the nose is excluded
    and mouth + lips are always included.
    """
    labels = np.asarray(labels)
    if labels.shape != (PARSE_SIZE, PARSE_SIZE):
        raise ValueError(f"labels must be a {PARSE_SIZE}x{PARSE_SIZE} class map, got shape {labels.shape}.")
    if mode == "raw":
        keep = np.isin(labels, (SKIN, *MOUTH_CLASSES))
    elif mode == "neck":
        keep = np.isin(labels, (SKIN, *MOUTH_CLASSES, NECK))
    elif mode == "jaw":
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, _JAW_KERNEL, iterations=1)
        eroded = cv2.erode(dilated, _CHEEK_KERNEL, iterations=2)
        cheeks = cheek_mask(left_cheek_width, right_cheek_width)
        region = (eroded & cheeks) | (dilated & ~cheeks)
        keep = ((region == 255) & (labels != NOSE)) | np.isin(labels, MOUTH_CLASSES)
    else:
        # Upstream silently treats any other string as "raw"; a typo should not change the result unnoticed.
        raise ValueError(f"mode must be one of {', '.join(REGION_MODES)}, got {mode!r}.")
    return np.where(keep, 255, 0).astype(np.uint8)
