"""`python -m dynamictrl evaluate`: the metrics on any pred/gt pair, or the whole TikTok
benchmark (`--tiktok DATASET_DIR`). Registered by dynamictrl/cli.py through
`add_arguments(parser)` and `run(args)`."""

import argparse
from pathlib import Path

from ..settings import OFFLOAD_CHOICES

HELP = "frame and video metrics (L1, SSIM, PSNR, PSNR*, LPIPS, FID-VID, FVD); --tiktok runs the benchmark"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .core import EvalProtocol

    defaults = EvalProtocol()
    parser.add_argument("--pred", help="predicted video, frame folder, or folder of them (matched to --gt by name)")
    parser.add_argument("--gt", help="ground-truth video, frame folder, or folder of them")
    parser.add_argument(
        "--tiktok",
        metavar="DATASET_DIR",
        help="run the TikTok benchmark (test videos 335-340): poses, generation, metrics, paper table",
    )
    parser.add_argument(
        "--metrics",
        default="all",
        help="all | frame | video | a list of l1,ssim,psnr,psnr*,lpips,fid-vid,fvd (default: all)",
    )
    parser.add_argument("--out", default=None, help="write the markdown table here (results JSON beside it)")
    parser.add_argument("--json", default=None, help="write the results JSON here (default: beside --out)")
    parser.add_argument("--compare-paper", action="store_true", help="put the paper's TikTok rows above ours")
    protocol = parser.add_argument_group("protocol (defaults: DisCo's, as in the published tables)")
    protocol.add_argument("--size", type=int, default=defaults.size, help="compare frames at SIZE x SIZE (default 256)")
    protocol.add_argument(
        "--crop",
        choices=("center", "resize"),
        default=defaults.crop,
        help="center: the centred square of each frame (DisCo); resize: squash the whole frame",
    )
    protocol.add_argument(
        "--include-first-frame",
        action="store_true",
        help="also compare frame 0 (by default it is left out: it re-draws the reference image)",
    )
    protocol.add_argument(
        "--clip-length",
        type=int,
        default=defaults.clip_length,
        help="frames per FID-VID/FVD clip (default 16, as published)",
    )
    protocol.add_argument(
        "--clip-stride",
        type=int,
        default=defaults.clip_stride,
        help="a clip starts every N frames (default 1, as DisCo)",
    )
    protocol.add_argument(
        "--lpips-scaling",
        choices=("disco", "standard"),
        default=defaults.lpips_scaling,
        help="disco: [0, 1] inputs as DisCo's script (comparable); standard: [-1, 1] as LPIPS intends",
    )
    protocol.add_argument("--trim", action="store_true", help="compare the first min(T_pred, T_gt) frames of each pair")
    parser.add_argument("--weights-dir", default=None, help="where weights live (default: ./weights)")
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda if present)")
    tiktok = parser.add_argument_group("--tiktok run")
    tiktok.add_argument("--out-dir", default=None, help="folder for generated videos, frames, table.md, results.json")
    tiktok.add_argument(
        "--tiktok-videos",
        default=None,
        help="comma list of test ids to run (default 335-340; a subset is not comparable)",
    )
    tiktok.add_argument("--frames", type=int, default=None, help="at most N frames per video (default: whole videos)")
    tiktok.add_argument(
        "--prompt", default="", help="one prompt for every video (default: auto caption of each reference)"
    )
    tiktok.add_argument("--width", type=int, default=768)
    tiktok.add_argument("--height", type=int, default=1360)
    tiktok.add_argument("--steps", type=int, default=25)
    tiktok.add_argument("--guidance", type=float, default=3.0)
    tiktok.add_argument("--seed", type=int, default=42)
    tiktok.add_argument("--model", default=None, help="hub id or folder of the base pipeline")
    tiktok.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    tiktok.add_argument("--offload", default="auto", choices=OFFLOAD_CHOICES)
    tiktok.add_argument("--t5-on-cpu", action="store_true")
    tiktok.add_argument("--no-resume", action="store_true", help="regenerate videos already in --out-dir")


def protocol_from(args):
    from .core import EvalProtocol

    return EvalProtocol(
        size=args.size,
        crop=args.crop,
        skip_first_frame=not args.include_first_frame,
        clip_length=args.clip_length,
        clip_stride=args.clip_stride,
        lpips_scaling=args.lpips_scaling,
        trim=args.trim,
    ).check()


def _json_path(args) -> Path | None:
    if args.json:
        return Path(args.json)
    return Path(args.out).with_suffix(".json") if args.out else None


def run(args) -> int:
    from .core import evaluate, markdown_table, parse_metrics, write_outputs
    from .tiktok import PAPER_SOURCE, PAPER_TIKTOK

    protocol = protocol_from(args)
    metrics = parse_metrics(args.metrics)
    if args.tiktok:
        return _run_tiktok(args, protocol, metrics)
    if not args.pred or not args.gt:
        raise ValueError("evaluate needs --pred and --gt (or --tiktok DATASET_DIR to run the benchmark).")
    result = evaluate(
        args.pred, args.gt, metrics, protocol, weights_dir=args.weights_dir, device=args.device, progress=print
    )
    rows = PAPER_TIKTOK if args.compare_paper else None
    note = PAPER_SOURCE if args.compare_paper else ""
    write_outputs(result, args.out, _json_path(args), reference_rows=rows, reference_note=note)
    print(markdown_table(result, rows, reference_note=note), end="")
    return 0


def _run_tiktok(args, protocol, metrics) -> int:
    from .. import weights
    from ..settings import GenerateSettings, PipelineOptions
    from ..studio import Studio
    from .tiktok import TIKTOK_TEST_VIDEOS, TikTokSettings, run_tiktok

    if not args.out_dir:
        raise ValueError("--tiktok needs --out-dir (where the generated videos, frames and table go).")
    try:
        videos = tuple(int(v) for v in args.tiktok_videos.split(",")) if args.tiktok_videos else TIKTOK_TEST_VIDEOS
    except ValueError as error:
        raise ValueError(f"--tiktok-videos takes numbers such as 335,336; got {args.tiktok_videos!r}.") from error
    studio = Studio(model=args.model or weights.BASE_REPO, weights_dir=args.weights_dir, device=args.device)
    template = GenerateSettings(
        prompt=args.prompt,
        width=args.width,
        height=args.height,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        dtype=args.dtype,
        memory=PipelineOptions(offload=args.offload, t5_on_cpu=args.t5_on_cpu),
    )
    settings = TikTokSettings(videos=videos, max_frames=args.frames, resume=not args.no_resume)
    outcome = run_tiktok(studio, args.tiktok, args.out_dir, template, settings, protocol, metrics, progress=print)
    table = outcome.table_path.read_text()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    print(table, end="")
    print(f"Wrote {outcome.table_path} and {outcome.json_path}.")
    return 0
