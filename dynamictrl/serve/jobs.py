"""Jobs as plain data: one dict per job, the same for the Serve deployment, the batch
runner and the `jobs.jsonl` file. No Ray here: a job runs on any `Studio`.

A job (JSON; paths are files the worker can read or write):

    {"kind": "generate", "image": "ref.png", "pose_video": "pose.mp4",   # or "driving_video"
     "out": "out/a.mp4", "settings": {"prompt": "...", "seed": 42, ...},  # GenerateSettings fields
     "pose_settings": {...}, "pose_provenance": {...}}                   # optional
    {"kind": "pose", "image": "ref.png", "driving_video": "dance.mp4", "out": "pose.mp4",
     "preview": "overlay.mp4", "json": "pose.json", "settings": {...}}   # PoseSettings fields
    {"kind": "lipsync", "video": "a.mp4", "audio": "speech.wav", "out": "talk.mp4", "settings": {...}}
    {"kind": "mask", "image": "ref.png", "mode": "background", "width": 768, "height": 1360,
     "points": [[x, y, 1], ...], "dilate_px": 0}                        # answers with two PNGs
    {"kind": "caption", "image": "ref.png", "mask_mode": null}           # answers with the caption

Two ways to move files, per job:
- by path: the worker reads the inputs and writes the outputs where the job says
  (a shared disk, or one machine);
- by value: `"files": {"image": {"name": "ref.png", "data": b"..."}}` carries inputs and
  `"return_files": true` asks for every output back as bytes (`result["files"]`, keyed by
  file name); nothing is left on the worker.
"""

import base64
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .schema import FILE_KINDS, INPUT_ROLES, JobError, settings_from, validate_job

MAX_NAME = 120


@dataclass
class JobContext:
    """What a job kind needs besides the job: where relative paths go and which folders a
    job may touch by path (None: any, as in a batch the user wrote)."""

    studio: object
    progress: object = None  # progress(fraction, message); may raise Cancelled
    outputs_dir: Path | None = None
    allowed_roots: list[Path] | None = None
    extra_kinds: dict = field(default_factory=dict)  # kind -> handler(job, context) -> result
    # preview(step, steps, frames): live previews of a generate job that asks for them
    # (`preview_every`); frames (F, h, w, 3) uint8 as in `dynamictrl.preview.Preview`.
    preview: object = None
    rank: int = 0  # this process's rank in a multi-process replica (dynamictrl/serve/group.py)

    def run(self, job: dict) -> dict:
        """Runs another job in this context (custom kinds build on the built-in ones)."""
        return run_job(job, self)


# ------------------------------------------------------------------ validation
def check_job(job, extra_kinds=()) -> dict:
    """The job if it is well formed (`dynamictrl.serve.schema`, the one job schema), else
    JobError naming each bad field."""
    validate_job(job, extra_kinds)
    return job


def output_paths(job: dict) -> list[Path]:
    """The files a finished job leaves (the last one is written last): what a rerun checks."""
    kind = job.get("kind")
    if kind not in FILE_KINDS:
        return []
    out = Path(job["out"])
    if kind == "pose":
        return [out, Path(job.get("json") or out.with_suffix(".json"))]
    return [out, out.with_suffix(".json")]


def is_done(job: dict) -> bool:
    paths = output_paths(job)
    return bool(paths) and all(path.is_file() and path.stat().st_size > 0 for path in paths)


# ------------------------------------------------------------------ files by value
def safe_name(name: str, fallback: str) -> str:
    """A plain file name from a client's path (no folders, no odd characters)."""
    base = Path(str(name or "")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:MAX_NAME]
    return base or fallback


def pack_inputs(job: dict) -> dict:
    """The job with its input files carried by value (for workers without the caller's disk)."""
    kind = job["kind"]
    packed = dict(job)
    files = dict(packed.get("files") or {})
    for role in INPUT_ROLES.get(kind, ()):
        path = packed.get(role)
        if path and role not in files:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"{role}: {path} not found.")
            files[role] = {"name": str(path), "data": path.read_bytes()}
            packed[role] = None
    packed["files"] = files
    return packed


def encode_files(files: dict) -> dict:
    """Bytes as base64 text (for JSON over HTTP); `decode_files` undoes it."""
    return {key: {**value, "data": base64.b64encode(value["data"]).decode("ascii")} for key, value in files.items()}


def decode_files(files: dict) -> dict:
    decoded = {}
    for key, value in (files or {}).items():
        data = value.get("data") if isinstance(value, dict) else None
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError as error:
                raise JobError(f"files[{key!r}]: data is not base64 ({error}).") from error
        if not isinstance(data, (bytes, bytearray)):
            raise JobError(f"files[{key!r}] needs 'data' (bytes, or base64 text over HTTP).")
        decoded[key] = {"name": str(value.get("name") or key), "data": bytes(data)}
    return decoded


def write_returned_files(result: dict, destinations: dict[str, Path], default_dir: Path) -> dict[str, Path]:
    """Writes `result["files"]` (name -> bytes) locally: a name in `destinations` goes to
    that path, any other (e.g. `<out>_pose.mp4`) beside the main output in `default_dir`."""
    written = {}
    for name, data in (result.get("files") or {}).items():
        target = destinations.get(name) or default_dir / safe_name(name, "output")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written[name] = target
    return written


# ------------------------------------------------------------------ running
def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _resolve(value, context: JobContext, what: str) -> Path:
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute() and context.outputs_dir is not None:
        path = context.outputs_dir / path
    path = path.resolve()
    if context.allowed_roots is not None and not _inside(path, context.allowed_roots):
        roots = ", ".join(str(root) for root in context.allowed_roots)
        raise JobError(
            f"{what} {value!r} is outside the folders this service shares ({roots}); "
            "send the file by value or use a shared folder."
        )
    return path


def _inputs(job: dict, context: JobContext, folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Input role -> local path (files by value written into `folder`), and role -> the
    name the caller knows the file by (for the manifest)."""
    paths, names = {}, {}
    files = decode_files(job.get("files"))
    for role in INPUT_ROLES[job["kind"]]:
        if role in files:
            # Under the caller's own file name (one folder per role): an input refused by
            # the probe is named as the caller knows it ("playlist.m3u8 is an HLS playlist").
            (folder / role).mkdir()
            target = folder / role / safe_name(files[role]["name"], role)
            target.write_bytes(files[role]["data"])
            paths[role], names[role] = target, files[role]["name"]
        elif job.get(role):
            path = _resolve(job[role], context, role)
            if not path.is_file():
                raise FileNotFoundError(f"{role}: {job[role]} not found on the worker ({path}).")
            paths[role] = path
    return paths, names


def _output(job: dict, key: str, context: JobContext, out_dir: Path | None) -> Path | None:
    value = job.get(key)
    if not value:
        return None
    if out_dir is not None:
        return out_dir / safe_name(value, f"{key}.out")
    path = _resolve(value, context, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _pose_summary(pose_result) -> dict:
    sequence = pose_result.sequence
    return {
        "num_frames": sequence.num_frames,
        "filled_frames": pose_result.filled_frames,
        "retarget_mode": sequence.retarget_mode,
        "retarget_info": sequence.retarget_info,
        "elapsed_s": round(pose_result.elapsed_s, 3),
        "pose_video": pose_result.pose_video_path.name if pose_result.pose_video_path else None,
    }


def _rewrite_input_names(manifest_path: Path, names: dict[str, str]) -> dict:
    """The manifest with the caller's input names instead of the worker's temp paths."""
    manifest = json.loads(manifest_path.read_text())
    for role, name in names.items():
        entry = manifest.get("inputs", {}).get(role)
        if isinstance(entry, dict) and "path" in entry:
            entry["path"] = name
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def run_job(job: dict, context: JobContext) -> dict:
    """Runs one job on `context.studio`; returns plain data:
    {"kind", "outputs": {what: path or file name}, "manifest": dict | None,
     "details": {...}, "elapsed_s", "files": {name: bytes} (when return_files)}."""
    from ..lipsync.settings import LipSyncSettings
    from ..studio import GenerateSettings, PoseSettings

    check_job(job, tuple(context.extra_kinds))
    kind = job["kind"]
    if kind in context.extra_kinds:
        return context.extra_kinds[kind](job, context)
    started = time.perf_counter()
    studio, progress = context.studio, context.progress
    work = Path(tempfile.mkdtemp(prefix="dynamictrl-job-"))
    try:
        inputs, names = _inputs(job, context, work)
        by_value = bool(job.get("return_files")) or kind in ("mask", "caption")
        out_dir = work / "out" if by_value else None
        if out_dir is not None:
            out_dir.mkdir()
        outputs, manifest, details = {}, None, {}
        if kind == "generate":
            settings = settings_from(GenerateSettings, job["settings"], "settings")
            pose_settings = (
                settings_from(PoseSettings, job["pose_settings"], "pose_settings") if job.get("pose_settings") else None
            )
            out = _output(job, "out", context, out_dir)
            previews = {}
            if job.get("preview_every") and context.preview is not None:

                def forward(shown):  # a Preview -> plain data (it crosses processes and Ray)
                    context.preview(shown.step, shown.steps, shown.frames)

                previews = {"preview": forward, "preview_every": int(job["preview_every"])}
            result = studio.generate(
                inputs["image"],
                out,
                settings,
                pose_video_path=inputs.get("pose_video"),
                driving_video_path=inputs.get("driving_video"),
                pose_settings=pose_settings,
                progress=progress,
                pose_provenance=job.get("pose_provenance"),
                **previews,
            )
            if not result.written:  # another rank of a multi-process replica: rank 0 answers
                return {"kind": kind, "outputs": {}, "manifest": None, "details": {}, "elapsed_s": result.elapsed_s}
            manifest = _rewrite_input_names(result.manifest_path, names)
            outputs = {"video": result.video_path, "manifest": result.manifest_path}
            if result.pose is not None:
                outputs["pose_video"] = result.pose.pose_video_path
                details["pose"] = _pose_summary(result.pose)
        elif kind == "pose":
            settings = settings_from(PoseSettings, job.get("settings"), "settings")
            paths = {key: _output(job, key, context, out_dir) for key in ("out", "preview", "json")}
            if out_dir is not None and len({p.name for p in paths.values() if p}) < len(
                [p for p in paths.values() if p]
            ):
                raise JobError("'out', 'preview' and 'json' need different file names.")
            result = studio.extract_poses(
                inputs["image"],
                inputs["driving_video"],
                settings,
                out_path=paths["out"],
                preview_path=paths["preview"],
                json_path=paths["json"],
                progress=progress,
            )
            outputs = {"pose_video": result.pose_video_path, "preview": result.preview_path, "json": result.json_path}
            details = _pose_summary(result)
        elif kind == "lipsync":
            settings = settings_from(LipSyncSettings, job.get("settings"), "settings")
            out = _output(job, "out", context, out_dir)
            result = studio.lipsync(inputs["video"], inputs["audio"], out, settings, progress=progress)
            manifest = _rewrite_input_names(result.manifest_path, names)
            outputs = {"video": result.video_path, "manifest": result.manifest_path}
            details = {"report": asdict(result.report), "summary": result.report.summary()}
        elif kind == "mask":
            points = [tuple(point) for point in job["points"]] if job.get("points") else None
            result = studio.mask(
                inputs["image"],
                job["mode"],
                int(job["width"]),
                int(job["height"]),
                out_path=out_dir / "masked.png",
                mask_path=out_dir / "mask.png",
                points=points,
                dilate_px=int(job.get("dilate_px", 0)),
            )
            details = {"mode": result.mode, "masked_fraction": round(float(result.mask.mean()), 4)}
        elif kind == "caption":
            caption = studio.caption(str(inputs["image"]), job.get("mask_mode"))
            details = {"caption": asdict(caption)}
        answer = {
            "kind": kind,
            "outputs": {key: (path.name if by_value else str(path)) for key, path in outputs.items() if path},
            "manifest": manifest,
            "details": details,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if by_value:
            answer["files"] = {path.name: path.read_bytes() for path in sorted(out_dir.iterdir()) if path.is_file()}
        return answer
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_jobs(path: str | Path) -> list[dict]:
    """The lines of a jobs.jsonl as records {"line", "id", "job" or "error"}; relative paths
    are taken from the file's folder. Blank lines and lines starting with # are skipped."""
    path = Path(path)
    base = path.resolve().parent
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        record = {"line": number, "id": f"line {number}"}
        try:
            job = json.loads(text)
            check_job(job)
            job = dict(job)
            if job["kind"] not in FILE_KINDS:
                raise JobError(f"Batch jobs write files: use kind {', '.join(FILE_KINDS)} (got {job['kind']!r}).")
            if job.get("files") or job.get("return_files"):
                raise JobError("In a jobs file inputs and outputs are paths ('files'/'return_files' are for clients).")
            for key in (*INPUT_ROLES[job["kind"]], "out", "preview", "json"):
                if job.get(key):
                    job[key] = str((base / os.path.expanduser(str(job[key]))).resolve())
            if job["kind"] == "pose" and not job.get("json"):
                # The pose JSON is what marks a pose job as finished (a rerun skips it).
                job["json"] = str(Path(job["out"]).with_suffix(".json"))
            record["id"] = str(job.get("id") or record["id"])
            record["job"] = job
        except (ValueError, TypeError) as error:  # json.JSONDecodeError and JobError are ValueErrors
            record["error"] = f"line {number}: {error}"
        records.append(record)
    return records
