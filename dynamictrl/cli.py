"""Command line: `python -m dynamictrl generate|download ...` (a thin adapter over studio.py)."""

import argparse
import sys

from . import weights

DESCRIPTION = "DynamiCtrl Studio: pose-guided human image animation."


def build_parser() -> argparse.ArgumentParser:
    from .studio import DTYPES, GenerateSettings

    defaults = GenerateSettings(prompt="")
    parser = argparse.ArgumentParser(prog="python -m dynamictrl", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="animate a reference image with a pose video")
    generate.add_argument("--image", required=True, help="reference image (PNG/JPEG)")
    generate.add_argument("--pose-video", required=True, help="rendered DWPose video; frame 0 = the reference's pose")
    generate.add_argument("--prompt", required=True, help="describe the person and the background")
    generate.add_argument("--negative-prompt", default=defaults.negative_prompt)
    generate.add_argument("--out", required=True, help="output .mp4 (a .json manifest is written beside it)")
    generate.add_argument("--frames", type=int, default=defaults.num_frames, help="4k+1 frames (default 37)")
    generate.add_argument("--width", type=int, default=defaults.width)
    generate.add_argument("--height", type=int, default=defaults.height)
    generate.add_argument("--steps", type=int, default=defaults.steps)
    generate.add_argument("--guidance", type=float, default=defaults.guidance)
    generate.add_argument("--seed", type=int, default=defaults.seed)
    generate.add_argument("--fps", type=float, default=defaults.fps)
    generate.add_argument("--variant", choices=sorted(weights.VARIANTS), default=None)
    generate.add_argument("--dtype", choices=DTYPES, default=defaults.dtype)
    generate.add_argument("--model", default=weights.BASE_REPO, help="hub id or folder of the base pipeline")
    generate.add_argument("--weights-dir", default=None, help="where weights live (default: ./weights)")
    generate.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)")

    download = commands.add_parser("download", help="fetch the weights into weights/ ahead of time")
    download.add_argument("--variant", choices=sorted(weights.VARIANTS), default=None)
    download.add_argument("--weights-dir", default=None)
    return parser


def run_generate(args) -> int:
    from .studio import GenerateSettings, Studio

    settings = GenerateSettings(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        fps=args.fps,
        variant=args.variant,
        dtype=args.dtype,
    )
    studio = Studio(model=args.model, weights_dir=args.weights_dir, device=args.device)
    result = studio.generate(args.image, args.pose_video, args.out, settings)
    print(f"Wrote {result.video_path} ({len(result.frames)} frames) and {result.manifest_path} "
          f"in {result.elapsed_s:.1f} s")
    return 0


def run_download(args) -> int:
    repos = [weights.BASE_REPO] + ([weights.variant_repo(args.variant)] if args.variant else [])
    for repo in repos:
        path = weights.download(repo, args.weights_dir)
        print(f"{repo} is in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
        return run_download(args)
    except (ValueError, FileNotFoundError) as error:
        # Input and weight problems are the user's to fix: a clear line, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
