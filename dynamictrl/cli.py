"""Command line: `python -m dynamictrl generate|pose|lipsync|download ...` (a thin adapter over studio.py)."""

import argparse
import sys
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path

from . import errors, presets, weights

DESCRIPTION = "DynamiCtrl Studio: pose-guided human image animation."
# Packages of the optional extras (pyproject.toml) -> the extra that installs them.
OPTIONAL_EXTRAS = {"ray": "serve", "peft": "train", "lpips": "eval", "skimage": "eval"}


# Settings fields whose default a preset supplies (--size, --speed): their flags default
# to None, "not given", and `size_and_speed` resolves them (an explicit flag wins).
PRESET_FLAGS = {"width": "--size", "height": "--size", "steps": "--speed", "first_block_cache": "--speed"}


def add_settings_arguments(parser, cls, names=None, where=None, preset_flags=None) -> None:
    """One argument per field of the settings dataclass `cls` that has a `flag` in its
    metadata (fields of nested option objects too, in their own group), with the field's
    type, default, choices and help; the parsed value lands under the field's name.
    `names`: only these fields; `where`: field name -> the group that holds its flag;
    `preset_flags`: field name -> the preset flag that supplies its default."""
    from .settings import field_default
    from .validation import value_type

    hints = typing.get_type_hints(cls)
    where, preset_flags = where or {}, preset_flags or {}
    for item in fields(cls):
        if names is not None and item.name not in names:
            continue
        meta = item.metadata
        if is_dataclass(item.default_factory):
            add_settings_arguments(
                parser.add_argument_group(meta["help"]), item.default_factory, where=where, preset_flags=preset_flags
            )
            continue
        if "flag" not in meta:
            continue
        target = where.get(item.name, parser)
        kind, default = value_type(hints[item.name]), field_default(item)
        if kind is bool:  # a switch: the flag turns the default around (--fp8, --no-color-match)
            target.add_argument(
                meta["flag"], dest=item.name, action="store_false" if default else "store_true", help=meta["help"]
            )
            continue
        if item.default is MISSING:
            default = kind()  # the prompt, the one required field: empty asks for an auto caption
        help_text = meta["help"]
        if item.name in preset_flags:
            help_text += f"; default {default}, or from {preset_flags[item.name]}"
            default = None
        elif default not in (None, ""):
            help_text += f"; default {default}"
        options = (
            {"choices": meta["choices"]}
            if meta.get("choices")
            else {"metavar": meta.get("metavar", meta["flag"].lstrip("-").upper().replace("-", "_"))}
        )
        target.add_argument(meta["flag"], dest=item.name, type=kind, default=default, help=help_text, **options)


def settings_from_args(cls, args, **resolved):
    """`cls` from the parsed arguments named after its fields (nested options too);
    `resolved`: values the command worked out itself (they win)."""
    from .settings import settings_from_dict

    names = [item.name for item in fields(cls)]
    for item in fields(cls):
        if is_dataclass(item.default_factory):
            names += [inner.name for inner in fields(item.default_factory)]
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return settings_from_dict(cls, {**values, **resolved})


# The pose extraction fields `generate` takes besides its own (frames, size and fps are the video's).
GENERATE_POSE_FIELDS = ("start_s", "retarget", "detect_every", "loop")


def command_in(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(declare: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. Every subcommand is listed, but only those in `declare` (all
    when None) get their own arguments: a subcommand's defaults may come from modules that
    import torch, and neither `--help` nor a typo should wait for those."""
    parser = argparse.ArgumentParser(prog="python -m dynamictrl", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of every error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        subparser = commands.add_parser(name, help=spec.help, description=spec.help)
        if declare is None or name in declare:
            spec.add_arguments(subparser)
    return parser


# Subcommands that live with their subsystem declare their own arguments; their modules
# load only when that subcommand is used.
def add_prepare_data_arguments(parser: argparse.ArgumentParser) -> None:
    from .data import cli as data_cli

    data_cli.add_arguments(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .eval import cli as eval_cli

    eval_cli.add_arguments(parser)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import cli as train_cli

    train_cli.add_arguments(parser)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from .serve import cli as serve_cli

    serve_cli.add_serve_arguments(parser)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    from .serve import cli as serve_cli

    serve_cli.add_batch_arguments(parser)


def add_generate_arguments(generate: argparse.ArgumentParser) -> None:
    # Light imports only: `generate --help` must not load torch (nor numpy, PIL).
    from .settings import GenerateSettings, PoseSettings

    generate.add_argument("--image", required=True, help="reference image (PNG/JPEG)")
    motion = generate.add_mutually_exclusive_group(required=True)
    motion.add_argument("--pose-video", help="rendered DWPose video; frame 0 = the reference's pose")
    motion.add_argument("--driving-video", help="raw dance video: poses are extracted and retargeted first")
    generate.add_argument("--out", required=True, help="output .mp4 (a .json manifest is written beside it)")
    generate.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of video instead of --frames (rounded to 4k+1 frames at --fps)",
    )
    generate.add_argument(
        "--size",
        choices=[p.name for p in presets.SIZE_PRESETS],
        default=None,
        help="a size preset: " + ", ".join(f"{p.name} {p.width}x{p.height}" for p in presets.SIZE_PRESETS),
    )
    generate.add_argument(
        "--speed",
        choices=[p.name for p in presets.SPEED_PRESETS],
        default=None,
        help="quality (25 steps, official) or draft (10 steps + first-block cache); "
        "--steps / --first-block-cache override it",
    )
    seeds = generate.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        default=None,
        metavar="N,N,...",
        help="variations: one video per seed (1 to 8), written as <out>_seed<N>.mp4",
    )
    seeds.add_argument(
        "--variations",
        type=int,
        default=None,
        metavar="K",
        help="variations: K videos with seeds --seed.. (default 42, 43, ...)",
    )
    generate.add_argument(
        "--preview-every",
        type=int,
        default=0,
        metavar="N",
        help="write a live preview (small frames from the x0 estimate) every N denoising steps "
        "into <out>_preview/ (default: off)",
    )
    generate.add_argument("--model", default=weights.BASE_REPO, help="hub id or folder of the base pipeline")
    generate.add_argument("--weights-dir", default=None, help="where weights live (default: ./weights)")
    generate.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)")
    # The settings' own flags, from their field metadata (dynamictrl/settings.py).
    speed = generate.add_argument_group("attention and GPUs")
    add_settings_arguments(
        generate, GenerateSettings, where={"seed": seeds, "attention": speed}, preset_flags=PRESET_FLAGS
    )
    add_settings_arguments(generate, PoseSettings, names=GENERATE_POSE_FIELDS)
    speed.add_argument(
        "--parallel",
        default=None,
        metavar="LAYOUT",
        help="one clip on several GPUs, e.g. ulysses=2,ring=1,cfg=2; start with torchrun "
        "--nproc-per-node N (N = the product); see docs/parallel.md",
    )


def add_pose_arguments(pose: argparse.ArgumentParser) -> None:
    from .settings import PoseSettings

    pose.add_argument("--image", required=True, help="reference image")
    pose.add_argument("--video", required=True, help="driving video (mp4, mov, webm, mkv, gif)")
    pose.add_argument("--out", required=True, help="output pose video (.mp4)")
    pose.add_argument("--preview", default=None, help="also write the skeletons over the reference, beside the video")
    pose.add_argument("--save-json", default=None, help="also write every pose as JSON (editable, reloadable)")
    pose.add_argument("--weights-dir", default=None)
    pose.add_argument("--device", default=None)
    add_settings_arguments(pose, PoseSettings)


def add_caption_arguments(caption: argparse.ArgumentParser) -> None:
    from .settings import MASK_MODES

    caption.add_argument("--image", required=True)
    caption.add_argument(
        "--mask-mode",
        choices=MASK_MODES,
        default=None,
        help="caption the visible part and leave a placeholder for the masked region",
    )
    caption.add_argument("--caption-model", choices=("2b", "7b"), default="2b")
    caption.add_argument("--weights-dir", default=None)
    caption.add_argument("--device", default=None)


def add_mask_arguments(mask: argparse.ArgumentParser) -> None:
    from .settings import MASK_MODES, widget_spec

    mask.add_argument("--image", required=True)
    mask.add_argument("--mode", choices=MASK_MODES, required=True)
    mask.add_argument(
        "--points",
        nargs="*",
        default=None,
        metavar="X,Y,+|-",
        help="clicks in target-size pixels: + marks the person (background mode) or the clothing "
        "(clothing mode), - excludes; without clicks the DWPose person box is the start",
    )
    mask.add_argument("--out", required=True, help="masked reference (.png), at the target size")
    mask.add_argument("--save-mask", default=None, help="also write the mask (.png, white = blacked out)")
    mask.add_argument("--width", type=int, default=widget_spec("width").default)
    mask.add_argument("--height", type=int, default=widget_spec("height").default)
    mask.add_argument("--dilate", type=int, default=0, help="grow the mask by N pixels")
    mask.add_argument("--sam", choices=("vit_b", "vit_l", "vit_h"), default="vit_b")
    mask.add_argument("--weights-dir", default=None)
    mask.add_argument("--device", default=None)


def add_models_arguments(models: argparse.ArgumentParser) -> None:
    models.add_argument(
        "--weights-dir", default=None, help="where weights live (default: ./weights or $DYNAMICTRL_WEIGHTS)"
    )
    models.add_argument("--json", action="store_true", help="print the rows as JSON")


def add_download_arguments(download: argparse.ArgumentParser) -> None:
    from . import catalog

    names = ", ".join([*catalog.BY_NAME, *catalog.GROUPS])
    download.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"models to fetch (see `python -m dynamictrl models`): {names}; default: base",
    )
    download.add_argument("--variant", choices=sorted(weights.VARIANTS), default=None, help="also this mask variant")
    download.add_argument("--dwpose", action="store_true", help="also the DWPose ONNX files (pose extraction)")
    download.add_argument("--sam", choices=("vit_b", "vit_l", "vit_h"), default=None, help="also a SAM checkpoint")
    download.add_argument("--captioner", choices=("2b", "7b"), default=None, help="also Qwen2-VL for captions")
    download.add_argument(
        "--lipsync", action="store_true", help="also MuseTalk 1.5 and its VAE, whisper-tiny and face-parsing weights"
    )
    download.add_argument(
        "--all", action="store_true", help="base, both variants, DWPose, SAM vit_b, Qwen2-VL 2B, lip-sync"
    )
    download.add_argument("--weights-dir", default=None)


def add_lipsync_arguments(lipsync: argparse.ArgumentParser) -> None:
    from .lipsync.settings import LipSyncSettings

    lipsync.add_argument("--video", required=True, help="video with a visible face, e.g. a generated clip")
    lipsync.add_argument("--audio", required=True, help="speech: wav, mp3, flac, ogg, m4a, or a video's audio track")
    lipsync.add_argument("--out", required=True, help="output .mp4 with the audio (a .json manifest beside it)")
    add_settings_arguments(lipsync, LipSyncSettings)
    lipsync.add_argument("--weights-dir", default=None)
    lipsync.add_argument("--device", default=None)
    lipsync.add_argument(
        "--cache-dir",
        default=None,
        help="where per-video avatars are kept (default: $DYNAMICTRL_CACHE or ~/.cache/dynamictrl)",
    )


def frames_for_duration(seconds: float, fps: float) -> int:
    """The 4k+1 frame count closest to `seconds` of video at `fps`."""
    if seconds <= 0:
        raise ValueError(f"--duration must be positive, got {seconds}.")
    return 4 * max(1, round((seconds * fps - 1) / 4)) + 1


def size_and_speed(args, defaults) -> tuple[int, int, int, float]:
    """Width, height, steps and first-block-cache threshold from --size/--speed and the
    explicit flags (an explicit flag wins over its preset's value)."""
    width, height = defaults.width, defaults.height
    if args.size is not None:
        if args.width is not None or args.height is not None:
            raise ValueError("Give either --size or --width/--height, not both.")
        preset = presets.size_preset(args.size)
        width, height = preset.width, preset.height
    width = args.width if args.width is not None else width
    height = args.height if args.height is not None else height
    steps, cache = defaults.steps, defaults.memory.first_block_cache
    if args.speed is not None:
        speed = presets.speed_preset(args.speed)
        steps, cache = speed.steps, speed.first_block_cache
    steps = args.steps if args.steps is not None else steps
    cache = args.first_block_cache if args.first_block_cache is not None else cache
    return width, height, steps, cache


def seeds_from(args) -> list[int] | None:
    """The seeds of a variations run (None: one video with --seed)."""
    if args.seeds is not None:
        try:
            return [int(text) for text in args.seeds.split(",") if text.strip()]
        except ValueError as error:
            raise ValueError(
                f"--seeds takes whole numbers separated by commas, e.g. 1,2,3 (got {args.seeds!r})."
            ) from error
    if args.variations is not None:
        return [args.seed + i for i in range(args.variations)]
    return None


class PreviewWriter:
    """Writes each live preview as `<folder>/step_<NNN>.png` (frames side by side)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: list[Path] = []

    def __call__(self, preview) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step_{preview.step:03d}.png"
        path.write_bytes(preview.png_bytes(max_frames=8))
        self.written.append(path)

    def remove(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def run_generate(args) -> int:
    from .settings import GenerateSettings, PoseSettings
    from .studio import Studio
    from .validation import check_seeds

    if args.duration is not None:
        args.num_frames = frames_for_duration(args.duration, args.fps)
    width, height, steps, first_block_cache = size_and_speed(args, GenerateSettings(prompt=""))
    seeds = seeds_from(args)
    if seeds is not None:
        check_seeds(seeds)
    if args.preview_every < 0:
        raise ValueError(f"--preview-every must be 0 (off) or a number of steps, got {args.preview_every}.")

    settings = settings_from_args(
        GenerateSettings, args, width=width, height=height, steps=steps, first_block_cache=first_block_cache
    )
    # Driving frames are sampled at the output fps, so the motion keeps its real speed.
    pose_settings = settings_from_args(
        PoseSettings, args, num_frames=settings.num_frames, width=width, height=height, fps=settings.fps
    )
    out = Path(args.out)
    studio = Studio(model=args.model, weights_dir=args.weights_dir, device=args.device, parallel=args.parallel)
    # With --parallel only rank 0 writes files, previews included.
    preview = (
        PreviewWriter(out.with_name(out.stem + "_preview")) if args.preview_every and studio.writes_outputs else None
    )
    job = dict(
        pose_video_path=args.pose_video,
        driving_video_path=args.driving_video,
        pose_settings=pose_settings,
        preview=preview,
        preview_every=args.preview_every or 5,
    )
    try:
        if seeds is None:
            results = [studio.generate(args.image, out, settings, **job)]
        else:
            report = (lambda r: print(f"Wrote {r.video_path}", flush=True)) if studio.writes_outputs else None
            results = studio.generate_variations(args.image, out, settings, seeds, on_result=report, **job)
    except BaseException:
        if preview is not None:
            preview.remove()  # previews of a job that produced nothing
        raise
    if not studio.writes_outputs:  # another rank of a --parallel job: rank 0 reports
        return 0
    first = results[0]
    if first.pose is not None:
        print(f"Pose video: {first.pose.pose_video_path}" + filled_note(first.pose.filled_frames))
    for result in results:
        print(
            f"Wrote {result.video_path} ({result.num_frames} frames) and {result.manifest_path} "
            f"in {result.elapsed_s:.1f} s"
        )
    if preview is not None and preview.written:
        print(f"Live previews: {len(preview.written)} images in {preview.folder}")
    return 0


def filled_note(filled: int) -> str:
    return f" ({filled} driving frames had no person and reuse the previous pose)" if filled else ""


def run_pose(args) -> int:
    from .settings import PoseSettings
    from .studio import Studio

    studio = Studio(weights_dir=args.weights_dir, device=args.device)
    result = studio.extract_poses(
        args.image,
        args.video,
        settings_from_args(PoseSettings, args, fps=args.fps or None),  # 0: every frame, as None
        out_path=args.out,
        preview_path=args.preview,
        json_path=args.save_json,
    )
    written = [p for p in (result.pose_video_path, result.preview_path, result.json_path) if p]
    print(
        "Wrote "
        + ", ".join(str(p) for p in written)
        + filled_note(result.filled_frames)
        + f" in {result.elapsed_s:.1f} s"
    )
    return 0


def parse_point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) != 3 or parts[2] not in ("+", "-"):
        raise ValueError(f"A point is x,y,+ or x,y,- (got {text!r}).")
    try:
        return float(parts[0]), float(parts[1]), 1 if parts[2] == "+" else 0
    except ValueError as error:
        raise ValueError(f"A point is x,y,+ or x,y,- with numbers for x and y (got {text!r}).") from error


def run_caption(args) -> int:
    from .studio import Studio

    studio = Studio(weights_dir=args.weights_dir, device=args.device, caption_model=args.caption_model)
    result = studio.caption(args.image, mask_mode=args.mask_mode)
    print(result.text)
    if result.truncated:
        print(f"(cut to fit the text encoder's 226 tokens: {result.t5_tokens} tokens)", file=sys.stderr)
    return 0


def run_mask(args) -> int:
    from .studio import Studio

    points = [parse_point(p) for p in args.points] if args.points else None
    studio = Studio(weights_dir=args.weights_dir, device=args.device, sam_kind=args.sam)
    result = studio.mask(
        args.image,
        args.mode,
        args.width,
        args.height,
        out_path=args.out,
        mask_path=args.save_mask,
        points=points,
        dilate_px=args.dilate,
    )
    print(
        f"Wrote {args.out} ({result.mask.mean():.0%} blacked out); generate with --variant "
        f"{'mask_background' if args.mode == 'background' else 'mask_clothing'} or --mask-mode {args.mode}"
    )
    return 0


class TqdmProgress:
    """A `progress(fraction, message)` callback drawing one tqdm bar."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None  # drawn at the first report: a job refused up front prints its one error line only

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=1000, desc=self.description, bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}")
        self.bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        self.bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_lipsync(args) -> int:
    from .lipsync.settings import LipSyncSettings
    from .studio import Studio

    settings = settings_from_args(LipSyncSettings, args)
    studio = Studio(weights_dir=args.weights_dir, device=args.device, cache_dir=args.cache_dir)
    progress = TqdmProgress("lip-sync")
    try:
        result = studio.lipsync(args.video, args.audio, args.out, settings, progress=progress)
    finally:
        progress.close()
    print(
        f"Wrote {result.video_path} and {result.manifest_path} in {result.elapsed_s:.1f} s. {result.report.summary()}"
    )
    return 0


def run_serve(args) -> int:
    from .serve import cli as serve_cli

    return serve_cli.run_serve(args)


def run_batch(args) -> int:
    from .serve import cli as serve_cli

    return serve_cli.run_batch(args)


def run_train(args) -> int:
    from .train import cli as train_cli

    return train_cli.run(args)


def run_evaluate(args) -> int:
    from .eval import cli as eval_cli

    return eval_cli.run(args)


def run_prepare_data(args) -> int:
    from .data import cli as data_cli

    return data_cli.run(args)


def download_names(args) -> list[str]:
    """The models `download` fetches: the names given, plus those of the older flags."""
    names = list(args.names)
    if args.variant:
        names.append(args.variant)
    if args.dwpose:
        names.append("dwpose")
    if args.sam:
        names.append(f"sam_{args.sam}")
    if args.captioner:
        names.append(f"qwen2vl_{args.captioner}")
    if args.lipsync:
        names.append("lipsync")
    if args.all:
        names.append("all")
    if not args.names:
        names.insert(0, "base")
    return names


def run_models(args) -> int:
    import json

    from . import catalog

    rows = catalog.statuses(args.weights_dir)
    if args.json:
        print(json.dumps([row.row() for row in rows], indent=2))
        return 0
    print(catalog.table(rows))
    missing = [row for row in rows if row.state != catalog.ON_DISK]
    if missing:
        total = catalog.format_bytes(sum(row.bytes_to_download for row in missing))
        print(f"\nNot on disk: {len(missing)} ({total}). Fetch one with: {catalog.COMMAND} NAME")
    return 0


class DownloadBar:
    """Draws `catalog.DownloadProgress` reports as one tqdm bar per model."""

    def __init__(self):
        self.bar = None
        self.model = None

    def __call__(self, report) -> None:
        from tqdm.auto import tqdm

        if report.model != self.model:
            self.close()
            self.model = report.model
            self.bar = tqdm(total=report.total_bytes, desc=report.model, unit="B", unit_scale=True, unit_divisor=1000)
        self.bar.n = report.done_bytes
        self.bar.set_postfix_str(report.text().split(", ", 1)[-1], refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_download(args) -> int:
    from . import catalog

    bar = DownloadBar()
    try:
        for item in catalog.expand(download_names(args)):
            path = catalog.download([item.name], args.weights_dir, progress=bar)[0]
            bar.close()
            print(f"{item.title} is in {path}")
    finally:
        bar.close()
    return 0


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = {
    "generate": Command("animate a reference image with a pose video", add_generate_arguments, run_generate),
    "pose": Command("make a pose video for a reference image from a driving video", add_pose_arguments, run_pose),
    "caption": Command(
        "describe a reference image with Qwen2-VL (an editable prompt)", add_caption_arguments, run_caption
    ),
    "mask": Command("black out the background or the clothing of a reference (SAM)", add_mask_arguments, run_mask),
    "models": Command(
        "list every model: on disk, partial or missing, sizes, folders, licences", add_models_arguments, run_models
    ),
    "download": Command("fetch models into weights/ ahead of time (resumable)", add_download_arguments, run_download),
    "lipsync": Command("lip-sync the face in a video to speech (MuseTalk 1.5)", add_lipsync_arguments, run_lipsync),
    "prepare-data": Command(
        "make a training dataset (clips, poses, prompts, masks, manifest) from a folder of videos",
        add_prepare_data_arguments,
        run_prepare_data,
    ),
    "evaluate": Command(
        "frame and video metrics (L1, SSIM, PSNR, PSNR*, LPIPS, FID-VID, FVD); --tiktok runs the benchmark",
        add_evaluate_arguments,
        run_evaluate,
    ),
    "train": Command(
        "fine-tune DynamiCtrl (full SFT or LoRA) on a prepare-data folder", add_train_arguments, run_train
    ),
    "serve": Command(
        "serve generation, pose extraction and lip-sync on Ray Serve (one replica per GPU) over HTTP",
        add_serve_arguments,
        run_serve,
    ),
    "batch": Command(
        "run a jobs.jsonl of generate/pose/lip-sync jobs on Ray (resumable; one GPU per worker)",
        add_batch_arguments,
        run_batch,
    ),
}


def missing_extra(error: BaseException) -> str | None:
    """The optional extra (pyproject.toml) whose package `error` says is not installed."""
    if isinstance(error, ModuleNotFoundError):
        return OPTIONAL_EXTRAS.get((error.name or "").split(".")[0])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_in(argv)
    args = build_parser([command] if command else []).parse_args(argv)
    errors.configure_cli_logging(debug=args.debug)
    try:
        return COMMANDS[args.command].run(args)
    except Exception as error:
        extra = missing_extra(error)
        if extra is not None:
            errors.logger.error(
                "`%s` needs %s, from the optional extra `%s`: pip install 'dynamictrl-studio[%s]' "
                "(in a checkout: pip install -r requirements-dev.txt)",
                args.command,
                error.name,
                extra,
                extra,
            )
            return 2
        if errors.is_user_error(error):
            # Input, weight and cancel problems are the user's to fix: one clear line; the
            # traceback only with --debug.
            errors.log_user_error(errors.logger, error)
            return 2
        if isinstance(error, OSError):
            # The system refused (permissions, a full disk, a vanished file): the user's to
            # fix too, but not bad input, hence a different exit status.
            errors.log_user_error(errors.logger, error)
            return 1
        raise
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130
    finally:
        end_process_group()


def end_process_group() -> None:
    """Leaves the process group a --parallel job joined (no-op otherwise)."""
    torch_distributed = sys.modules.get("torch.distributed")
    if torch_distributed is not None and torch_distributed.is_available() and torch_distributed.is_initialized():
        torch_distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
