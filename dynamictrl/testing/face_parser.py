"""A randomly initialised BiSeNet saved like the official 79999_iter.pth (a plain state dict)."""

from pathlib import Path

import torch


def save_tiny_face_parser(path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random BiSeNet state dict to `path` (a file, or `79999_iter.pth` inside a
    folder). It has the real architecture (~13M parameters): only the values are fake."""
    from ..lipsync.face_parsing import BiSeNet

    path = Path(path)
    if path.is_dir():
        path = path / "79999_iter.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = BiSeNet()
    # Spread the batch-norm statistics so the random logits vary across the image and classes.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), path)
    return path
