"""The `prepare-data` subcommand: `add_arguments(parser)` declares it, `run(args)` runs it.

python -m dynamictrl prepare-data --videos clips/ --out dataset/ [--mask background] [--no-caption]
"""

import argparse

from .prepare import MIN_FRAMES, PrepareSettings

HELP = "make a training dataset (clips, poses, prompts, masks, manifest) from a folder of videos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PrepareSettings()
    parser.add_argument("--videos", required=True, help="folder of source videos (mp4, mov, webm, mkv, avi, gif)")
    parser.add_argument(
        "--out",
        required=True,
        help="dataset folder (manifest.json, videos/, poses/, masks/); an earlier run there is resumed",
    )
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--fps", type=float, default=defaults.fps, help="every clip is resampled to this fps")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help=f"keep at most N frames of each video (at least {MIN_FRAMES}; default: all)",
    )
    parser.add_argument(
        "--mask",
        choices=("none", "background", "clothing"),
        default="none",
        help="also write masks/<id>.png: the region of the first frame SAM blacks out",
    )
    parser.add_argument(
        "--caption",
        action=argparse.BooleanOptionalAction,
        default=defaults.caption,
        help="caption each first frame with Qwen2-VL (--no-caption: empty prompts)",
    )
    parser.add_argument("--caption-model", choices=("2b", "7b"), default="2b")
    parser.add_argument("--weights-dir", default=None, help="where weights live (default: ./weights)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)")


def settings_from(args) -> PrepareSettings:
    return PrepareSettings(
        width=args.width,
        height=args.height,
        fps=args.fps,
        max_frames=args.max_frames,
        mask=None if args.mask == "none" else args.mask,
        caption=args.caption,
    )


def print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", flush=True)


def run(args, studio=None) -> int:
    """Prepares the dataset and prints a summary; `studio` (tests, the app) saves loading
    another one. Bad arguments raise ValueError (the main CLI prints it as one line)."""
    from .prepare import prepare_dataset

    settings = settings_from(args)
    settings.check()  # before any model is set up
    if studio is None:
        from ..studio import Studio

        studio = Studio(weights_dir=args.weights_dir, device=args.device, caption_model=args.caption_model)
    report = prepare_dataset(studio, args.videos, args.out, settings, progress=print_progress)
    print(report.summary())
    return 0
