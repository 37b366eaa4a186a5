"""Every model DynamiCtrl Studio can use: what it is for, where it lives, whether it is on
disk, how big it is, its licence, and how to fetch it.

    from dynamictrl import catalog
    for status in catalog.statuses():            # works offline: reads the disk only
        print(status.spec.title, status.state, status.bytes_to_download)
    catalog.download(["base", "dwpose"], progress=print, cancel=threading.Event())

`python -m dynamictrl models` prints the table, `python -m dynamictrl download NAME...`
fetches; the app's Models tab and `Studio.missing_models` use the same functions.

Downloads: the file list and exact sizes come from the hub (`HfApi.model_info`), the bytes
from the hub's `resolve` URLs with HTTP Range requests into `<file>.part`, so an
interrupted or cancelled download resumes inside the file it stopped in (huggingface_hub
2.x deletes a partial file on failure and restarts it from zero, which costs hours on a
5 GB shard) and progress (bytes, speed, ETA) is exact. SAM comes from Meta's CDN the same
way (`weights.SAM_CHECKPOINTS`).
"""

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import weights

logger = logging.getLogger(__name__)

ON_DISK, PARTIAL, MISSING = "on disk", "partial", "missing"
DOWNLOAD_RECORD = ".dynamictrl-download.json"  # the hub's file list, written before the first byte
COMMAND = "python -m dynamictrl download"

_COGVIDEOX_LICENCE = (
    "CogVideoX licence (DynamiCtrl is fine-tuned from CogVideoX-1.5-5B-I2V)",
    "https://huggingface.co/THUDM/CogVideoX1.5-5B-I2V/blob/main/LICENSE",
)


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model. `download_bytes` is the size on the hub when this table was
    written (exact for SAM); `files` limits a hub repo to those files (None: the whole repo)."""

    name: str  # what `python -m dynamictrl download NAME` takes
    title: str
    purpose: str
    download_bytes: int
    licence: str
    licence_url: str
    repo_id: str | None = None
    files: tuple[str, ...] | None = None
    sam_kind: str | None = None  # a SAM checkpoint from Meta's CDN instead of a hub repo
    layout: str = "files"  # how "complete" is judged: "pipeline" (base folder), "model" (config + weights), "files"

    @property
    def command(self) -> str:
        return f"{COMMAND} {self.name}"

    @property
    def source_url(self) -> str:
        if self.sam_kind is not None:
            return weights.sam_checkpoint(self.sam_kind).url
        return f"https://huggingface.co/{self.repo_id}"

    def path(self, weights_dir: str | os.PathLike | None = None) -> Path:
        """Where it lives: `weights/<repo-name>` (a SAM checkpoint: its file in `weights/sam/`)."""
        if self.sam_kind is not None:
            return weights.sam_checkpoint_path(self.sam_kind, weights_dir)
        return weights.local_dir_for(self.repo_id, weights_dir)


def _sam(kind: str, title: str) -> ModelSpec:
    return ModelSpec(
        f"sam_{kind}",
        title,
        "masks (Person / Background / Clothing)",
        weights.SAM_CHECKPOINTS[kind].size,
        "Apache-2.0",
        "https://github.com/facebookresearch/segment-anything/blob/main/LICENSE",
        sam_kind=kind,
    )


MODELS = (
    ModelSpec(
        "base",
        "DynamiCtrl (base)",
        "every generation: T5 text encoder, VAE, 5B transformer",
        22_000_000_000,
        *_COGVIDEOX_LICENCE,
        repo_id=weights.BASE_REPO,
        layout="pipeline",
    ),
    ModelSpec(
        "mask_background",
        "DynamiCtrl Mask_B01",
        "generation with the background masked",
        11_500_000_000,
        *_COGVIDEOX_LICENCE,
        repo_id=weights.VARIANTS["mask_background"],
        layout="model",
    ),
    ModelSpec(
        "mask_clothing",
        "DynamiCtrl Mask_C01",
        "generation with the clothing masked",
        11_500_000_000,
        *_COGVIDEOX_LICENCE,
        repo_id=weights.VARIANTS["mask_clothing"],
        layout="model",
    ),
    ModelSpec(
        "dwpose",
        "DWPose",
        "poses from a driving video; the person box for masks",
        351_000_000,
        "Apache-2.0",
        "https://github.com/IDEA-Research/DWPose/blob/main/LICENSE",
        repo_id=weights.DWPOSE_REPO,
        files=weights.DWPOSE_FILES,
    ),
    _sam("vit_b", "SAM ViT-B"),
    _sam("vit_l", "SAM ViT-L"),
    _sam("vit_h", "SAM ViT-H"),
    ModelSpec(
        "qwen2vl_2b",
        "Qwen2-VL 2B Instruct",
        "auto captions (default)",
        4_420_000_000,
        "Apache-2.0",
        "https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/LICENSE",
        repo_id="Qwen/Qwen2-VL-2B-Instruct",
        layout="model",
    ),
    ModelSpec(
        "qwen2vl_7b",
        "Qwen2-VL 7B Instruct",
        "auto captions (better, slower)",
        16_600_000_000,
        "Apache-2.0",
        "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/LICENSE",
        repo_id="Qwen/Qwen2-VL-7B-Instruct",
        layout="model",
    ),
    ModelSpec(
        "musetalk",
        "MuseTalk 1.5 UNet",
        "lip-sync",
        3_400_000_000,
        "MIT",
        "https://github.com/TMElyralab/MuseTalk/blob/main/LICENSE",
        repo_id=weights.MUSETALK_REPO,
        files=weights.MUSETALK_FILES,
    ),
    ModelSpec(
        "sd_vae",
        "SD VAE ft-MSE",
        "lip-sync (MuseTalk's image VAE)",
        335_000_000,
        "MIT",
        "https://huggingface.co/stabilityai/sd-vae-ft-mse",
        repo_id=weights.SD_VAE_REPO,
        files=weights.SD_VAE_FILES,
    ),
    ModelSpec(
        "whisper_tiny",
        "Whisper tiny",
        "lip-sync (audio features)",
        151_000_000,
        "Apache-2.0",
        "https://huggingface.co/openai/whisper-tiny",
        repo_id=weights.WHISPER_REPO,
        files=weights.WHISPER_FILES,
    ),
    ModelSpec(
        "face_parsing",
        "Face parsing (BiSeNet)",
        "lip-sync (blending mask)",
        53_300_000,
        "MIT",
        "https://github.com/zllrunning/face-parsing.PyTorch/blob/master/LICENSE",
        repo_id=weights.FACE_PARSING_REPO,
        files=weights.FACE_PARSING_FILES,
    ),
)
BY_NAME = {spec.name: spec for spec in MODELS}
# Names that stand for several models on the command line.
GROUPS = {
    "lipsync": ("musetalk", "sd_vae", "whisper_tiny", "face_parsing"),
    "all": (
        "base",
        "mask_background",
        "mask_clothing",
        "dwpose",
        "sam_vit_b",
        "qwen2vl_2b",
        "musetalk",
        "sd_vae",
        "whisper_tiny",
        "face_parsing",
    ),
}


def spec(name: str) -> ModelSpec:
    if name not in BY_NAME:
        raise ValueError(f"Unknown model {name!r}; known: {', '.join([*BY_NAME, *GROUPS])}.")
    return BY_NAME[name]


def expand(names: Iterable[str]) -> list[ModelSpec]:
    """Model names and group names (lipsync, all) -> specs, in order, without repeats."""
    result: list[ModelSpec] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            item = spec(member)
            if item not in result:
                result.append(item)
    return result


def variant_model(variant: str | None) -> str:
    """The catalog name of a transformer variant (None: the base model)."""
    weights.variant_repo(variant)
    return "base" if variant in (None, "base") else variant


def sam_model(kind: str) -> str:
    weights.sam_checkpoint(kind)
    return f"sam_{kind}"


def caption_model(size: str) -> str:
    if size not in ("2b", "7b"):
        raise ValueError(f"Unknown caption model {size!r}: use '2b' or '7b'.")
    return f"qwen2vl_{size}"


# --------------------------------------------------------------------------- status
@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    state: str  # ON_DISK | PARTIAL | MISSING
    path: Path
    bytes_on_disk: int

    @property
    def bytes_to_download(self) -> int:
        """What is left to fetch (an estimate while the size table is approximate)."""
        return 0 if self.state == ON_DISK else max(0, self.spec.download_bytes - self.bytes_on_disk)

    def row(self) -> dict:
        """One row of the Models table (plain values, for the app and JSON)."""
        return {
            "name": self.spec.name,
            "model": self.spec.title,
            "used for": self.spec.purpose,
            "state": self.state,
            "on disk": format_bytes(self.bytes_on_disk),
            "to download": format_bytes(self.bytes_to_download) if self.state != ON_DISK else "",
            "folder": str(self.path),
            "licence": self.spec.licence,
            "licence_url": self.spec.licence_url,
            "source": self.spec.source_url,
            "command": self.spec.command,
        }


def format_bytes(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name != DOWNLOAD_RECORD] if folder.is_dir() else []


def _weights_complete(folder: Path) -> bool:
    """A model folder's weights: every shard its index names, or one weights file."""
    indexes = list(folder.glob("*.index.json"))
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not all((folder / shard).is_file() for shard in shards):
            return False
    return bool(indexes) or any(folder.glob(pattern) for pattern in ("*.safetensors", "*.bin", "*.pth"))


def _model_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and _weights_complete(folder)


def _pipeline_complete(folder: Path) -> bool:
    """The base folder: model_index.json, a tokenizer, scheduler config and the three models."""
    return (
        (folder / "model_index.json").is_file()
        and any((folder / "tokenizer").glob("*"))
        and (folder / "scheduler" / "scheduler_config.json").is_file()
        and all(_model_complete(folder / part) for part in ("text_encoder", "vae", "transformer"))
    )


def _recorded_complete(folder: Path) -> bool | None:
    """From the hub's file list written by `download` (None when there is none): every
    file there with its size."""
    record = folder / DOWNLOAD_RECORD
    if not record.is_file():
        return None
    try:
        files = json.loads(record.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def status(name: str, weights_dir: str | os.PathLike | None = None) -> ModelStatus:
    """On disk / partial / missing, from the disk alone (works offline)."""
    item = spec(name)
    path = item.path(weights_dir)
    if item.sam_kind is not None:
        part = path.with_name(path.name + ".part")
        size = path.stat().st_size if path.is_file() else 0
        part_size = part.stat().st_size if part.is_file() else 0
        if size == item.download_bytes:
            return ModelStatus(item, ON_DISK, path, size)
        return ModelStatus(item, PARTIAL if size or part_size else MISSING, path, size + part_size)
    files = _files_under(path)
    on_disk = sum(p.stat().st_size for p in files)
    if not files:
        return ModelStatus(item, MISSING, path, 0)
    if any(p.name.endswith(".part") for p in files):
        return ModelStatus(item, PARTIAL, path, on_disk)
    if item.files is not None:
        complete = all((path / name).is_file() for name in item.files)
    else:
        recorded = _recorded_complete(path)
        if recorded is not None:
            complete = recorded
        elif item.layout == "pipeline":
            complete = _pipeline_complete(path)
        else:
            complete = _model_complete(path)
    return ModelStatus(item, ON_DISK if complete else PARTIAL, path, on_disk)


def statuses(weights_dir: str | os.PathLike | None = None, names: Iterable[str] | None = None) -> list[ModelStatus]:
    return [status(item.name, weights_dir) for item in (expand(names) if names is not None else MODELS)]


def table(rows: list[ModelStatus]) -> str:
    """The Models table as aligned text (what `python -m dynamictrl models` prints)."""
    header = ("name", "state", "on disk", "to download", "folder", "licence")
    lines = [header] + [
        (
            s.spec.name,
            s.state,
            format_bytes(s.bytes_on_disk),
            format_bytes(s.bytes_to_download) if s.state != ON_DISK else "-",
            str(s.path),
            s.spec.licence_url,
        )
        for s in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1] for line in lines
    )


# --------------------------------------------------------------------------- missing models
class MissingModelsError(weights.WeightsNotFoundError):
    """Every model a job needs that is not on disk, in one message with sizes and the one
    command that fetches them all. `.missing` holds the `ModelStatus` of each."""

    def __init__(self, missing: list[ModelStatus], reason: str = ""):
        self.missing = missing
        super().__init__(missing_message(missing, reason))


def missing_message(missing: list[ModelStatus], reason: str = "") -> str:
    total = sum(s.bytes_to_download for s in missing)
    listed = ", ".join(
        f"{s.spec.title} ({format_bytes(s.bytes_to_download)}"
        + (", partly downloaded" if s.state == PARTIAL else "")
        + ")"
        for s in missing
    )
    names = " ".join(s.spec.name for s in missing)
    return (
        f"This job needs {len(missing)} model{'s' if len(missing) > 1 else ''} that "
        f"{'are' if len(missing) > 1 else 'is'} not on disk: {listed}; {format_bytes(total)} in all"
        + (f" ({reason})" if reason else "")
        + f". Fetch with: {COMMAND} {names}"
    )


def check_on_disk(names: Iterable[str], weights_dir: str | os.PathLike | None = None, reason: str = "") -> None:
    """Raises one `MissingModelsError` naming every model of `names` that is not on disk."""
    missing = [s for s in statuses(weights_dir, names) if s.state != ON_DISK]
    if missing:
        raise MissingModelsError(missing, reason)


# --------------------------------------------------------------------------- download
@dataclass(frozen=True)
class DownloadProgress:
    """What a progress bar shows: bytes done of total, speed and time left."""

    model: str
    file: str
    done_bytes: int
    total_bytes: int
    bytes_per_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else 0.0

    def text(self) -> str:
        left = "" if self.eta_s is None else f", {_duration(self.eta_s)} left"
        return (
            f"{self.model}: {format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)} "
            f"({self.fraction:.0%}), {format_bytes(self.bytes_per_s)}/s{left}"
        )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the repo (or the SAM file name)
    url: str
    size: int
    sha256: str | None


class _Meter:
    """Turns byte counts into `DownloadProgress` reports, at most every `interval_s`."""

    def __init__(
        self, model: str, total: int, report: Callable[[DownloadProgress], None] | None, interval_s: float = 0.25
    ):
        self.model, self.total, self.report, self.interval_s = model, total, report, interval_s
        self.done = 0
        self.fresh = 0  # bytes moved in this session (resumed bytes do not count for speed)
        self.started = time.monotonic()
        self.last_report = 0.0
        self.file = ""

    def add(self, count: int, fresh: bool = True) -> None:
        self.done += count
        if fresh:
            self.fresh += count
        now = time.monotonic()
        if now - self.last_report >= self.interval_s:
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        if self.report is None:
            return
        now = time.monotonic() if now is None else now
        self.last_report = now
        elapsed = max(now - self.started, 1e-6)
        speed = self.fresh / elapsed
        left = max(0, self.total - self.done)
        eta = left / speed if speed > 0 else None
        self.report(DownloadProgress(self.model, self.file, self.done, self.total, speed, eta))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def remote_files(item: ModelSpec, endpoint: str | None = None) -> list[RemoteFile]:
    """The files to fetch for a model, with exact sizes (asks the hub for hub repos)."""
    if item.sam_kind is not None:
        checkpoint = weights.sam_checkpoint(item.sam_kind)
        return [RemoteFile(checkpoint.filename, checkpoint.url, checkpoint.size, checkpoint.sha256)]
    from huggingface_hub import HfApi, hf_hub_url

    info = HfApi(endpoint=endpoint).model_info(item.repo_id, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = list(item.files) if item.files is not None else sorted(siblings)
    files = []
    for name in [name for name in names if name in siblings]:
        sibling = siblings[name]
        size = sibling.lfs.size if sibling.lfs is not None else sibling.size
        sha256 = sibling.lfs.sha256 if sibling.lfs is not None else None
        url = hf_hub_url(item.repo_id, name, revision=info.sha, endpoint=endpoint)
        files.append(RemoteFile(name, url, size, sha256))
    return files


def hub_download_bytes(name: str, endpoint: str | None = None) -> int | None:
    """The exact download size from the hub's file list (SAM: the pinned size); None
    offline or when the hub cannot be reached (the table's estimate stands, the reason
    goes to the log)."""
    item = spec(name)
    if item.sam_kind is None and _offline():
        return None
    try:
        return sum(f.size for f in remote_files(item, endpoint))
    except Exception as error:  # the hub client raises many kinds of network errors
        logger.info("Could not read the size of %s from the hub: %r", item.source_url, error)
        return None


def download_model(
    name: str,
    weights_dir: str | os.PathLike | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    endpoint: str | None = None,
    chunk_bytes: int = 1 << 20,
    report_every_s: float = 0.25,
) -> Path:
    """Fetches one model into its folder (`ModelSpec.path`), resuming what is there.

    `progress` receives a `DownloadProgress` a few times a second and once at the end;
    setting `cancel` stops within one chunk with `weights.DownloadCancelled` (the partial
    file stays for a resume). Offline or unreachable: `WeightsNotFoundError` with one
    sentence, the command, and how to copy the folder from another machine; the raw
    network error goes to the log.
    """
    item = spec(name)
    target = item.path(weights_dir)
    folder = target.parent if item.sam_kind is not None else target
    if _offline():
        raise weights.WeightsNotFoundError(_cannot_download(item, weights_dir, "offline mode is on (HF_HUB_OFFLINE=1)"))
    try:
        files = remote_files(item, endpoint)
    except Exception as error:  # the hub client raises many kinds of network errors
        logger.warning("Listing %s on the hub failed: %r", item.source_url, error)
        raise weights.WeightsNotFoundError(_cannot_download(item, weights_dir, "the hub cannot be reached")) from error
    absent = sorted(set(item.files or ()) - {f.name for f in files})
    if absent:
        raise weights.WeightsNotFoundError(_cannot_download(item, weights_dir, f"the hub has no {', '.join(absent)}"))
    folder.mkdir(parents=True, exist_ok=True)
    if item.sam_kind is None:
        record = {"repo_id": item.repo_id, "files": {f.name: f.size for f in files}}
        (folder / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2))
    meter = _Meter(name, sum(f.size for f in files), progress, report_every_s)
    for remote in files:
        destination = folder / remote.name
        meter.file = remote.name
        if destination.is_file() and destination.stat().st_size == remote.size:
            meter.add(remote.size, fresh=False)
            continue
        resumed = [True]

        def on_bytes(count: int, resumed=resumed) -> None:
            # The first report of a resumed file is the part already on disk.
            meter.add(count, fresh=not resumed[0])
            resumed[0] = False

        part = destination.with_name(destination.name + ".part")
        resumed[0] = part.is_file() and part.stat().st_size > 0
        try:
            # Every model of the catalog is public: no token is sent (urllib would forward it
            # to the CDN the hub redirects to).
            weights.download_url(
                remote.url,
                destination,
                size=remote.size,
                sha256=remote.sha256,
                on_bytes=on_bytes,
                cancel=cancel,
                chunk_bytes=chunk_bytes,
            )
        except weights.DownloadCancelled:
            meter.emit()
            raise
        except Exception as error:
            logger.warning("Downloading %s failed: %r", remote.url, error)
            raise weights.WeightsNotFoundError(
                _cannot_download(item, weights_dir, f"the download of {remote.name} failed")
            ) from error
    meter.emit()
    return target


def download(
    names: Iterable[str],
    weights_dir: str | os.PathLike | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    endpoint: str | None = None,
) -> list[Path]:
    """`download_model` for each of `names` (groups allowed), skipping models on disk.
    Offline, one error names every model that is not on disk."""
    items = expand(names)
    if _offline():
        missing = [s for s in statuses(weights_dir, [i.name for i in items]) if s.state != ON_DISK]
        if missing:
            folders = ", ".join(s.path.name for s in missing)
            raise weights.WeightsNotFoundError(
                f"Cannot download here: offline mode is on (HF_HUB_OFFLINE=1). On a machine with internet access run "
                f"`{COMMAND} {' '.join(s.spec.name for s in missing)} --weights-dir weights`, then copy {folders} "
                f"from its weights/ folder into {Path(weights_dir or weights.default_weights_dir())} on this machine."
            )
    paths = []
    for item in items:
        current = status(item.name, weights_dir)
        if current.state == ON_DISK:
            paths.append(current.path)
            continue
        paths.append(download_model(item.name, weights_dir, progress, cancel, endpoint))
    return paths


def _cannot_download(item: ModelSpec, weights_dir, reason: str) -> str:
    """Never circular: says what to run on a machine that can download, and where to copy."""
    target = item.path(weights_dir)
    if item.sam_kind is not None:
        what = f"the file weights/{weights.SAM_SUBDIR}/{target.name}"
    else:
        what = f"the folder weights/{target.name}"
    return (
        f"Cannot download {item.title} here: {reason}. On a machine with internet access run "
        f"`{item.command} --weights-dir weights`, then copy {what} to {target} on this machine "
        "(or point DYNAMICTRL_WEIGHTS at a folder that has it)."
    )
