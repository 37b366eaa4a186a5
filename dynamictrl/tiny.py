"""Tiny mode: every model replaced by its tiny random twin from the test suite.

`python app.py --tiny` (or DYNAMICTRL_TINY=1) uses this so the whole app can be clicked
through, by tests and by people, without downloading ~35 GB of weights. The outputs are
noise. The builders live in `tests/tiny_*.py` (one place, shared with the test suite),
so tiny mode needs the source checkout, not just the installed package.
"""

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"

# What the UI offers in tiny mode: sizes and lengths the tiny VAE decodes in about a second on a CPU.
TINY_SIZE = (64, 80)  # width, height: the tiny transformer's positional grid is 64x80 at most
TINY_FRAMES = 9
TINY_STEPS = 2


def _import_test_builders():
    if not (TESTS_DIR / "tiny_models.py").is_file():
        raise RuntimeError(f"Tiny mode needs the test helpers in {TESTS_DIR} (a source checkout of the repository).")
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


def save_tiny_weights(folder: str | Path) -> Path:
    """Writes tiny DynamiCtrl (+ mask variants), DWPose, Qwen2-VL and MuseTalk checkpoints into
    `folder` in the real hub layouts; returns it. Skips what is already there."""
    _import_test_builders()
    from tiny_models import save_tiny_checkpoints
    from tiny_musetalk import save_tiny_musetalk
    from tiny_onnx import save_tiny_dwpose
    from tiny_qwen import FOLDER_NAME, save_tiny_qwen

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


def tiny_studio(folder: str | Path):
    """A CPU `Studio` over tiny weights in `folder`, with the tiny SAM registered under the
    name the studio uses (real SAM checkpoints are checked against the official file size)."""
    from .segment import Segmenter
    from .studio import Studio

    save_tiny_weights(folder)
    from tiny_sam import build_tiny_sam

    studio = Studio(weights_dir=folder, device="cpu", cache_dir=Path(folder) / "cache")
    studio.manager.register("sam.vit_b", lambda: Segmenter(build_tiny_sam(), device="cpu"))
    return studio
