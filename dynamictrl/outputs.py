"""Writing results so that a failed job leaves nothing half-written.

Every file is written under a hidden temporary name beside its target and renamed into
place (a rename within a folder is atomic), so a crash, a full disk or an exception never
leaves a truncated file under the real name. A call that writes several files removes the
ones it created when a later one fails (`NewFiles`): a pose video without its preview and
JSON, or a masked reference without its mask, is not a result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(partial)` writes the whole file to a temporary path, which is then renamed to
    `path`; on any failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def save_image_atomic(path: str | Path, image) -> Path:
    """A PIL image (or an array PIL accepts) saved atomically, in the format its suffix names."""
    from PIL import Image

    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path.name}: unknown image extension {path.suffix!r}; use .png.")
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    return write_atomic(path, lambda partial: image.save(partial, format=image_format))


class NewFiles:
    """`with NewFiles(a, b) as new:` removes, when the block fails, those of the paths that
    did not exist before it (an earlier run's file under the same name is never touched)."""

    def __init__(self, *paths: str | Path | None):
        self.paths = [Path(path) for path in paths if path is not None]

    def __enter__(self) -> NewFiles:
        self.existing = {path for path in self.paths if path.exists()}
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            return
        for path in self.paths:
            if path not in self.existing:
                path.unlink(missing_ok=True)
