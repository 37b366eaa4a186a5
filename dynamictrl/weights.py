"""Where model weights come from: a local folder first, else a hub download into `weights/`.

Every model of the project (DynamiCtrl and its mask variants, later DWPose, SAM,
Qwen2-VL, MuseTalk) is resolved here, so there is one place that knows the folder
layout, the download command and the offline error.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

BASE_REPO = "gulucaptain/DynamiCtrl"
VARIANTS = {
    "mask_background": "gulucaptain/Dynamictrl-Mask_B01",
    "mask_clothing": "gulucaptain/Dynamictrl-Mask_C01",
}
# DWPose (pose extraction): only the two ONNX files the official pipeline uses.
DWPOSE_REPO = "yzd-v/DWPose"
DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
# Lip-sync (MuseTalk 1.5): the UNet from MuseTalk's repo and the three models it builds on,
# each fetched file by file into `weights/<repo-name>/`. The face-parsing BiSeNet was
# published on Google Drive only; `vivym/face-parsing-bisenet` is the hub mirror of the
# same `79999_iter.pth` (a plain state dict, loaded with weights_only=True).
MUSETALK_REPO = "TMElyralab/MuseTalk"
MUSETALK_FILES = ("musetalkV15/unet.pth", "musetalkV15/musetalk.json")
SD_VAE_REPO = "stabilityai/sd-vae-ft-mse"
SD_VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
WHISPER_REPO = "openai/whisper-tiny"
WHISPER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
FACE_PARSING_REPO = "vivym/face-parsing-bisenet"
FACE_PARSING_FILES = ("79999_iter.pth",)
LIPSYNC_WEIGHTS = {
    MUSETALK_REPO: MUSETALK_FILES,
    SD_VAE_REPO: SD_VAE_FILES,
    WHISPER_REPO: WHISPER_FILES,
    FACE_PARSING_REPO: FACE_PARSING_FILES,
}
# Approximate download sizes, for messages and the docs.
SIZES_GB = {BASE_REPO: 22.0, VARIANTS["mask_background"]: 11.5, VARIANTS["mask_clothing"]: 11.5}

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOWNLOAD_FAILED = "the download failed; the log has the details"

logger = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """Raised when weights are neither on disk nor downloadable; the message names the fix."""


class DownloadCancelled(Exception):
    """A download stopped by its cancel event; the bytes so far are kept for a resume."""


def default_weights_dir() -> Path:
    """`$DYNAMICTRL_WEIGHTS` if set; else the `weights/` folder of the source checkout when
    the package runs from one (beside pyproject.toml), else `weights/` in the current folder:
    an installed package never downloads into site-packages."""
    if "DYNAMICTRL_WEIGHTS" in os.environ:
        return Path(os.environ["DYNAMICTRL_WEIGHTS"])
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / "weights"
    return Path.cwd() / "weights"


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
    """The one command that fetches a model: `python -m dynamictrl download NAME` for
    every model of the catalog (`dynamictrl/catalog.py`); `hf download` only for other repos."""
    from . import catalog

    name = next((spec.name for spec in catalog.MODELS if spec.repo_id == repo_id), None)
    if name is not None:
        return f"{catalog.COMMAND} {name}" + (f" --weights-dir {weights_dir}" if weights_dir else "")
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
    folder, repo_id, target = _folder_or_repo(path_or_repo_id, weights_dir)
    if folder is not None:
        return folder
    if _is_complete(target):
        return target
    if local_files_only or _offline():
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, "offline mode is on"))
    return download(repo_id, weights_dir)


def _folder_or_repo(path_or_repo_id, weights_dir) -> tuple[Path | None, str, Path | None]:
    """(the folder itself, when an existing folder was given) or (None, hub id, its
    `weights/<repo-name>` folder); anything else is refused."""
    candidate = Path(path_or_repo_id).expanduser()
    if candidate.is_dir():
        return candidate, str(candidate), None
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise WeightsNotFoundError(f"{repo_id!r} is neither an existing folder nor a hub id like 'owner/name'.")
    return None, repo_id, local_dir_for(repo_id, weights_dir)


TOKENIZER_PATTERNS = ("tokenizer/*",)  # the T5 tokenizer of the base repo: a few MB of its 22 GB


def resolve_tokenizer(
    path_or_repo_id: str | os.PathLike,
    weights_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A folder whose `tokenizer/` holds the base model's T5 tokenizer.

    Like `resolve`, but a missing tokenizer is fetched alone (`allow_patterns`
    `tokenizer/*`): prompt checks and captions need only it, not the 22 GB of models.
    The folder counts as partial afterwards, so `resolve` still fetches the rest when a
    generation needs it.
    """
    folder, repo_id, target = _folder_or_repo(path_or_repo_id, weights_dir)
    if folder is not None:
        return folder
    if (target / "tokenizer").is_dir() and any((target / "tokenizer").iterdir()):
        return target
    if local_files_only or _offline():
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, "offline mode is on"))
    return download(repo_id, weights_dir, allow_patterns=list(TOKENIZER_PATTERNS))


def download(repo_id: str, weights_dir: str | os.PathLike | None = None, allow_patterns=None) -> Path:
    """Downloads (or resumes) a hub repo into `weights/<repo-name>`; shows tqdm progress."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target = local_dir_for(repo_id, weights_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = None if allow_patterns else SIZES_GB.get(repo_id)
    print(f"Downloading {repo_id}" + (f" (~{size:.0f} GB)" if size else "") + f" into {target} ...", flush=True)
    try:
        snapshot_download(repo_id=repo_id, local_dir=str(target), allow_patterns=allow_patterns)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        # The raw network error is for the log; the message says what to do.
        logger.warning("Downloading %s failed: %r", repo_id, error)
        raise WeightsNotFoundError(_missing_message(repo_id, target, weights_dir, DOWNLOAD_FAILED)) from error
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
        raise WeightsNotFoundError(
            _missing_message(repo_id, target, weights_dir, DOWNLOAD_FAILED, filenames)
        ) from error
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


# ---------------------------------------------------------------------------------------
# Segment Anything (SAM) checkpoints.
#
# Meta publishes the three SAM checkpoints only on its own CDN (the hub's
# `facebook/sam-vit-*` repos hold a different, transformers-format conversion), so they
# are fetched from there with a plain resumable HTTPS download rather than through
# huggingface_hub. Sizes and SHA-256 digests of the official files are pinned so a
# truncated or substituted file is caught before it reaches `torch.load`.

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_SUBDIR = "sam"  # weights/sam/<official filename>


@dataclass(frozen=True)
class SamCheckpoint:
    filename: str
    size: int  # bytes
    sha256: str

    @property
    def url(self) -> str:
        return SAM_URL + self.filename


SAM_CHECKPOINTS = {
    "vit_b": SamCheckpoint(
        "sam_vit_b_01ec64.pth", 375_042_383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    ),
    "vit_l": SamCheckpoint(
        "sam_vit_l_0b3195.pth", 1_249_524_607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"
    ),
    "vit_h": SamCheckpoint(
        "sam_vit_h_4b8939.pth", 2_564_550_879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
    ),
}


def sam_checkpoint(kind: str) -> SamCheckpoint:
    if kind not in SAM_CHECKPOINTS:
        raise ValueError(f"Unknown SAM model {kind!r}; use one of {', '.join(SAM_CHECKPOINTS)}.")
    return SAM_CHECKPOINTS[kind]


def sam_checkpoint_path(kind: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """`weights/sam/<official filename>`, e.g. `weights/sam/sam_vit_b_01ec64.pth`."""
    return Path(weights_dir or default_weights_dir()) / SAM_SUBDIR / sam_checkpoint(kind).filename


def sam_download_command(kind: str, weights_dir: str | os.PathLike | None = None) -> str:
    sam_checkpoint(kind)
    return f"python -m dynamictrl download sam_{kind}" + (f" --weights-dir {weights_dir}" if weights_dir else "")


def _sam_missing(kind: str, target: Path, weights_dir, reason: str) -> WeightsNotFoundError:
    spec = sam_checkpoint(kind)
    return WeightsNotFoundError(
        f"The SAM {kind} checkpoint is not in {target} and could not be downloaded ({reason}). "
        f"On a machine with internet access run:  {sam_download_command(kind, weights_dir)}  "
        f"(or copy {spec.filename}, {spec.size:,} bytes, from {spec.url} into {target.parent})."
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_sam(
    kind: str = "vit_b",
    weights_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """The path of the official SAM checkpoint `kind` (vit_b, vit_l, vit_h).

    Present with the expected size: returned as is (the digest is checked once, after
    download, not on every start). Missing or partial: downloaded/resumed from Meta's
    CDN unless offline (`HF_HUB_OFFLINE=1`, the project-wide switch) or
    `local_files_only`, which raise `WeightsNotFoundError` naming the command.
    """
    spec = sam_checkpoint(kind)
    target = sam_checkpoint_path(kind, weights_dir)
    if target.is_file():
        size = target.stat().st_size
        if size == spec.size:
            return target
        # A wrong-sized file under the official name is never silently used: it is a
        # copy cut short (or another file); the partial download lives in `.part`.
        raise WeightsNotFoundError(
            f"{target} has {size:,} bytes but the official {spec.filename} has {spec.size:,}; it is incomplete "
            f"or not the official checkpoint. Delete it and run:  {sam_download_command(kind, weights_dir)}"
        )
    if local_files_only or _offline():
        raise _sam_missing(kind, target, weights_dir, "offline mode is on")
    try:
        return download_url(spec.url, target, size=spec.size, sha256=spec.sha256)
    except (OSError, ValueError, HTTPException) as error:  # URLError is an OSError; a cut stream an HTTPException
        logger.warning("Downloading %s failed: %r", spec.url, error)
        # A size or digest mismatch (ValueError) is ours and says what happened; network text is for the log.
        raise _sam_missing(
            kind, target, weights_dir, str(error) if isinstance(error, ValueError) else DOWNLOAD_FAILED
        ) from error


def download_url(
    url: str,
    target: str | os.PathLike,
    size: int | None = None,
    sha256: str | None = None,
    chunk_bytes: int = 1 << 20,
    headers: dict | None = None,
    on_bytes: Callable[[int], None] | None = None,
    cancel=None,
) -> Path:
    """Downloads `url` to `target` over plain HTTP(S).

    Bytes go to `<target>.part` first; a later call resumes it with an HTTP Range
    request (a server that ignores the range gets a fresh start). The finished file is
    checked against `size` and `sha256` before it is renamed into place, so `target`
    only ever exists complete. A mismatch deletes the part file and raises ValueError.

    Progress: `on_bytes(n)` after every chunk (the bytes already in the part file are
    reported once, first); without it a tqdm bar is drawn. `cancel` (a
    `threading.Event`) stops between chunks with `DownloadCancelled`, keeping the part
    file for a later resume.
    """
    import hashlib
    import urllib.request

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:  # not a prefix of this file: start over
        part.unlink()
        have = 0
    if size is None or have < size:
        request_headers = dict(headers or {})
        if have:
            request_headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=request_headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and getattr(response, "status", 200) != 206:
                have = 0  # the server sent the whole file
            total = size if size is not None else (have + int(response.headers.get("Content-Length", 0)) or None)
            mode = "ab" if have else "wb"
            report, bar = on_bytes, None
            if report is None:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name)
                report = bar.update
            elif have:
                report(have)
            try:
                with open(part, mode) as out:
                    while True:
                        if cancel is not None and cancel.is_set():
                            raise DownloadCancelled(f"Download of {target.name} cancelled; run it again to resume.")
                        chunk = response.read(chunk_bytes)
                        if not chunk:
                            break
                        out.write(chunk)
                        report(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    got = part.stat().st_size
    if size is not None and got != size:
        raise ValueError(f"download of {url} stopped at {got:,} of {size:,} bytes; run again to resume")
    if sha256 is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            part.unlink()
            raise ValueError(
                f"{url} arrived with SHA-256 {digest.hexdigest()}, expected {sha256}; the partial file was removed"
            )
    os.replace(part, target)
    return target
