"""Where model weights come from: a local folder first, else a hub download into `weights/`.

Every model of the project (DynamiCtrl and its mask variants, later DWPose, SAM,
Qwen2-VL, MuseTalk) is resolved here, so there is one place that knows the folder
layout, the download command and the offline error.
"""

import os
from pathlib import Path

BASE_REPO = "gulucaptain/DynamiCtrl"
VARIANTS = {
    "mask_background": "gulucaptain/Dynamictrl-Mask_B01",
    "mask_clothing": "gulucaptain/Dynamictrl-Mask_C01",
}
# DWPose (pose extraction): only the two ONNX files the official pipeline uses.
DWPOSE_REPO = "yzd-v/DWPose"
DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
# Approximate download sizes, for messages and the README.
SIZES_GB = {BASE_REPO: 22.0, VARIANTS["mask_background"]: 11.5, VARIANTS["mask_clothing"]: 11.5}

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class WeightsNotFoundError(FileNotFoundError):
    """Raised when weights are neither on disk nor downloadable; the message names the fix."""


def default_weights_dir() -> Path:
    """`$DYNAMICTRL_WEIGHTS` if set, else the project's `weights/` folder."""
    return Path(os.environ.get("DYNAMICTRL_WEIGHTS", PROJECT_ROOT / "weights"))


def variant_repo(variant: str | None) -> str | None:
    """Hub id of a transformer variant; None for the base model."""
    if variant is None or variant == "base":
        return None
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}: use None (base), " + ", ".join(repr(v) for v in VARIANTS) + ".")
    return VARIANTS[variant]


def local_dir_for(repo_id: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """`weights/<repo-name>`, e.g. `weights/DynamiCtrl` for `gulucaptain/DynamiCtrl`."""
    return Path(weights_dir or default_weights_dir()) / repo_id.rstrip("/").split("/")[-1]


def download_command(repo_id: str, weights_dir: str | os.PathLike | None = None, filenames=None) -> str:
    variant = next((name for name, repo in VARIANTS.items() if repo == repo_id), None)
    if repo_id == BASE_REPO or variant:
        return "python -m dynamictrl download" + (f" --variant {variant}" if variant else "")
    files = "".join(f" {name}" for name in filenames or ())
    return f"hf download {repo_id}{files} --local-dir {local_dir_for(repo_id, weights_dir)}"


def _is_complete(folder: Path) -> bool:
    """A folder counts as present once it holds a config or model index (a partial
    download interrupted before that is resumed instead)."""
    return folder.is_dir() and any((folder / name).exists() for name in ("model_index.json", "config.json"))


def resolve(
    path_or_repo_id: str | os.PathLike,
    weights_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder for `path_or_repo_id`.

    Order: an existing folder given directly; `weights/<repo-name>`; else a resumable
    `huggingface_hub.snapshot_download` into `weights/<repo-name>` with a progress bar.
    Offline (or `local_files_only`) and missing raises `WeightsNotFoundError` naming the
    exact command that fetches the files.
    """
    candidate = Path(path_or_repo_id).expanduser()
    if candidate.is_dir():
        return candidate
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise WeightsNotFoundError(f"{repo_id!r} is neither an existing folder nor a hub id like 'owner/name'.")
    target = local_dir_for(repo_id, weights_dir)
    if _is_complete(target):
        return target
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline:
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, "offline mode is on"))
    return download(repo_id, weights_dir)


def download(repo_id: str, weights_dir: str | os.PathLike | None = None, allow_patterns=None) -> Path:
    """Downloads (or resumes) a hub repo into `weights/<repo-name>`; shows tqdm progress."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target = local_dir_for(repo_id, weights_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = SIZES_GB.get(repo_id)
    print(f"Downloading {repo_id}" + (f" (~{size:.0f} GB)" if size else "") + f" into {target} ...", flush=True)
    try:
        snapshot_download(repo_id=repo_id, local_dir=str(target), allow_patterns=allow_patterns)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, str(error))) from error
    return target


def resolve_files(
    repo_id: str,
    filenames,
    weights_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """`weights/<repo-name>` once it holds every file in `filenames` (for hub repos of
    loose files without a config, e.g. DWPose's ONNX models); otherwise downloads just
    those files into it, or offline raises `WeightsNotFoundError` naming the command."""
    filenames = list(filenames)
    target = local_dir_for(repo_id, weights_dir)
    missing = [name for name in filenames if not (target / name).is_file()]
    if not missing:
        return target
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline:
        reason = f"offline mode is on; missing {', '.join(missing)}"
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, reason, filenames))
    try:
        download(repo_id, weights_dir, allow_patterns=filenames)
    except WeightsNotFoundError as error:
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, str(error.__cause__), filenames)) from error
    missing = [name for name in filenames if not (target / name).is_file()]
    if missing:
        reason = f"the download did not contain {', '.join(missing)}"
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, reason, filenames))
    return target


def _missing_message(repo_id: str, target: Path, weights_dir, reason: str, filenames=None) -> str:
    what = f"the files {', '.join(filenames)} of" if filenames else "the files of"
    return (
        f"Weights for {repo_id} are not in {target} and could not be downloaded ({reason}). "
        f"On a machine with internet access run:  {download_command(repo_id, weights_dir, filenames)}  "
        f"(or copy {what} https://huggingface.co/{repo_id} into {target})."
    )
