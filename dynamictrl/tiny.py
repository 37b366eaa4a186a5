"""Tiny mode: every model replaced by its tiny random twin from `dynamictrl.testing`.

`python app.py --tiny` (or DYNAMICTRL_TINY=1) uses this so the whole app can be clicked
through, by tests and by people, without downloading ~35 GB of weights. The outputs are
noise. The builders are part of the package (`dynamictrl/testing/`, shared with the test
suite), so tiny mode works from an installed wheel as well as from a checkout.
"""

from pathlib import Path

# What the UI offers in tiny mode: sizes and lengths the tiny VAE decodes in about a second on a CPU.
TINY_SIZE = (64, 80)  # width, height: the tiny transformer's positional grid is 64x80 at most
TINY_FRAMES = 9
TINY_STEPS = 2


def save_tiny_weights(folder: str | Path) -> Path:
    """Writes tiny DynamiCtrl (+ mask variants), DWPose, Qwen2-VL and MuseTalk checkpoints into
    `folder` in the real hub layouts; returns it. Skips what is already there."""
    from .testing.models import save_tiny_checkpoints
    from .testing.musetalk import save_tiny_musetalk
    from .testing.onnx import save_tiny_dwpose
    from .testing.qwen import FOLDER_NAME, save_tiny_qwen

    folder = Path(folder)
    if not (folder / "DynamiCtrl" / "model_index.json").is_file():
        save_tiny_checkpoints(folder)
    if not (folder / "DWPose" / "dw-ll_ucoco_384.onnx").is_file():
        save_tiny_dwpose(folder / "DWPose")
    if not (folder / FOLDER_NAME / "config.json").is_file():
        save_tiny_qwen(folder)
    if not (folder / "face-parsing-bisenet" / "79999_iter.pth").is_file():
        save_tiny_musetalk(folder)
    return folder


def tiny_studio(folder: str | Path, parallel=None):
    """A CPU `Studio` over tiny weights in `folder`, with the tiny SAM registered under the
    name the studio uses (real SAM checkpoints are checked against the official file size).
    `parallel`: as `Studio(parallel=...)` (one rank of a process group on gloo)."""
    from .segment import Segmenter
    from .studio import Studio
    from .testing.sam import build_tiny_sam

    save_tiny_weights(folder)
    studio = Studio(weights_dir=folder, device="cpu", cache_dir=Path(folder) / "cache", parallel=parallel)
    studio.manager.register("sam.vit_b", lambda: Segmenter(build_tiny_sam(), device="cpu"))
    return studio
