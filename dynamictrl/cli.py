"""Command line: `python -m dynamictrl generate|pose|lipsync|download ...` (a thin adapter over studio.py)."""

import argparse
import sys

from . import weights

DESCRIPTION = "DynamiCtrl Studio: pose-guided human image animation."


def add_pose_options(parser: argparse.ArgumentParser, defaults) -> None:
    parser.add_argument("--retarget", choices=("global", "bones", "none"), default=defaults.retarget,
                        help="fit the driving poses to the reference body (default: global, the official fit)")
    parser.add_argument("--start", type=float, default=defaults.start_s, help="start time in the driving video (s)")
    parser.add_argument("--detect-every", type=int, default=defaults.detect_every,
                        help="run the person detector every N frames (faster; boxes are reused between)")
    parser.add_argument("--loop", action="store_true", help="loop a driving video that is too short")


def pose_settings_from(args, num_frames: int, width: int, height: int, fps: float | None):
    from .studio import PoseSettings

    return PoseSettings(
        num_frames=num_frames,
        width=width,
        height=height,
        fps=fps or None,
        start_s=args.start,
        retarget=args.retarget,
        detect_every=args.detect_every,
        loop=args.loop,
    )


def build_parser() -> argparse.ArgumentParser:
    from .studio import DTYPES, GenerateSettings, PoseSettings

    defaults = GenerateSettings(prompt="")
    pose_defaults = PoseSettings()
    parser = argparse.ArgumentParser(prog="python -m dynamictrl", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="animate a reference image with a pose video")
    generate.add_argument("--image", required=True, help="reference image (PNG/JPEG)")
    motion = generate.add_mutually_exclusive_group(required=True)
    motion.add_argument("--pose-video", help="rendered DWPose video; frame 0 = the reference's pose")
    motion.add_argument("--driving-video", help="raw dance video: poses are extracted and retargeted first")
    generate.add_argument("--prompt", default="", help="describe the person and the background (empty: auto caption)")
    generate.add_argument("--negative-prompt", default=defaults.negative_prompt)
    generate.add_argument("--out", required=True, help="output .mp4 (a .json manifest is written beside it)")
    generate.add_argument("--frames", type=int, default=defaults.num_frames,
                          help="4k+1 frames, any length (default 37; longer clips are made in overlapping windows)")
    generate.add_argument("--duration", type=float, default=None,
                          help="seconds of video instead of --frames (rounded to 4k+1 frames at --fps)")
    generate.add_argument("--window-frames", type=int, default=defaults.window_frames,
                          help="frames per window for long clips (4k+1; 37 is the trained length)")
    generate.add_argument("--overlap", type=int, default=defaults.overlap,
                          help="latent frames shared by neighbouring windows (each is 4 video frames)")
    generate.add_argument("--no-color-match", action="store_true",
                          help="do not match each window's colours to the first window's")
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
    add_pose_options(generate, pose_defaults)
    generate.add_argument("--mask-mode", choices=("background", "clothing"), default=None,
                          help="black out this region of the reference and let the prompt fill it (picks the Mask variant)")
    generate.add_argument("--fill", default="", help="with --mask-mode and no --prompt: what the masked region shows")
    speed = generate.add_argument_group("memory and speed")
    speed.add_argument("--offload", choices=("auto", "none", "model", "group", "sequential"), default=defaults.offload,
                       help="where weights live during generation (auto: the fastest tier that fits free VRAM)")
    speed.add_argument("--fp8", action="store_true", help="store transformer weights in float8 (about half the VRAM)")
    speed.add_argument("--int8", action="store_true", help="torchao int8 weight-only transformer (about half the VRAM)")
    speed.add_argument("--first-block-cache", type=float, default=defaults.first_block_cache, metavar="THRESHOLD",
                       help="skip the remaining blocks when the first block's output barely changes (e.g. 0.05)")
    speed.add_argument("--pab", action="store_true", help="Pyramid Attention Broadcast (reuses attention across steps)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the transformer (slow first run)")
    speed.add_argument("--fuse-qkv", action="store_true", help="fuse the attention Q/K/V projections")
    speed.add_argument("--t5-on-cpu", action="store_true",
                       help="encode the prompt on the CPU: T5 (9.5 GB) never takes GPU memory; slower start")

    pose = commands.add_parser("pose", help="make a pose video for a reference image from a driving video")
    pose.add_argument("--image", required=True, help="reference image")
    pose.add_argument("--video", required=True, help="driving video (mp4, mov, webm, mkv, gif)")
    pose.add_argument("--out", required=True, help="output pose video (.mp4)")
    pose.add_argument("--frames", type=int, default=pose_defaults.num_frames, help="4k+1 frames incl. the reference pose")
    pose.add_argument("--width", type=int, default=pose_defaults.width)
    pose.add_argument("--height", type=int, default=pose_defaults.height)
    pose.add_argument("--fps", type=float, default=pose_defaults.fps,
                      help="resample the driving video to this fps (0: keep every frame, as the official code)")
    pose.add_argument("--preview", default=None, help="also write the skeletons over the reference, beside the video")
    pose.add_argument("--save-json", default=None, help="also write every pose as JSON (editable, reloadable)")
    pose.add_argument("--weights-dir", default=None)
    pose.add_argument("--device", default=None)
    add_pose_options(pose, pose_defaults)

    caption = commands.add_parser("caption", help="describe a reference image with Qwen2-VL (an editable prompt)")
    caption.add_argument("--image", required=True)
    caption.add_argument("--mask-mode", choices=("background", "clothing"), default=None,
                         help="caption the visible part and leave a placeholder for the masked region")
    caption.add_argument("--caption-model", choices=("2b", "7b"), default="2b")
    caption.add_argument("--weights-dir", default=None)
    caption.add_argument("--device", default=None)

    mask = commands.add_parser("mask", help="black out the background or the clothing of a reference (SAM)")
    mask.add_argument("--image", required=True)
    mask.add_argument("--mode", choices=("background", "clothing"), required=True)
    mask.add_argument("--points", nargs="*", default=None, metavar="X,Y,+|-",
                      help="clicks in target-size pixels: + marks the person (background mode) or the clothing "
                           "(clothing mode), - excludes; without clicks the DWPose person box is the start")
    mask.add_argument("--out", required=True, help="masked reference (.png), at the target size")
    mask.add_argument("--save-mask", default=None, help="also write the mask (.png, white = blacked out)")
    mask.add_argument("--width", type=int, default=defaults.width)
    mask.add_argument("--height", type=int, default=defaults.height)
    mask.add_argument("--dilate", type=int, default=0, help="grow the mask by N pixels")
    mask.add_argument("--sam", choices=("vit_b", "vit_l", "vit_h"), default="vit_b")
    mask.add_argument("--weights-dir", default=None)
    mask.add_argument("--device", default=None)

    download = commands.add_parser("download", help="fetch the weights into weights/ ahead of time")
    download.add_argument("--variant", choices=sorted(weights.VARIANTS), default=None)
    download.add_argument("--dwpose", action="store_true", help="also the DWPose ONNX files (pose extraction)")
    download.add_argument("--sam", choices=("vit_b", "vit_l", "vit_h"), default=None, help="also a SAM checkpoint")
    download.add_argument("--captioner", choices=("2b", "7b"), default=None, help="also Qwen2-VL for captions")
    download.add_argument("--lipsync", action="store_true",
                          help="also MuseTalk 1.5 and its VAE, whisper-tiny and face-parsing weights")
    download.add_argument("--all", action="store_true",
                          help="base, both variants, DWPose, SAM vit_b, Qwen2-VL 2B, lip-sync")
    download.add_argument("--weights-dir", default=None)
    # Subcommands that live with their subsystem: each module declares its own arguments.
    from .data import cli as data_cli
    from .eval import cli as eval_cli
    from .serve import cli as serve_cli
    from .train import cli as train_cli

    data_cli.add_arguments(commands.add_parser("prepare-data", help=data_cli.HELP))
    eval_cli.add_arguments(commands.add_parser("evaluate", help=eval_cli.HELP))
    train_cli.add_arguments(commands.add_parser("train", help="fine-tune DynamiCtrl (full SFT or LoRA) on a prepare-data folder"))
    serve_cli.add_serve_arguments(commands.add_parser("serve", help=serve_cli.SERVE_HELP))
    serve_cli.add_batch_arguments(commands.add_parser("batch", help=serve_cli.BATCH_HELP))

    from .lipsync.settings import LipSyncSettings

    lip_defaults = LipSyncSettings()
    lipsync = commands.add_parser("lipsync", help="lip-sync the face in a video to speech (MuseTalk 1.5)")
    lipsync.add_argument("--video", required=True, help="video with a visible face, e.g. a generated clip")
    lipsync.add_argument("--audio", required=True, help="speech: wav, mp3, flac, ogg, m4a, or a video's audio track")
    lipsync.add_argument("--out", required=True, help="output .mp4 with the audio (a .json manifest beside it)")
    lipsync.add_argument("--bbox-shift", type=int, default=lip_defaults.bbox_shift,
                         help="px to move the top of the repainted mouth region (positive: down, opens the mouth more)")
    lipsync.add_argument("--extra-margin", type=int, default=lip_defaults.extra_margin,
                         help="px below the chin included in the face crop (v1.5 default 10)")
    lipsync.add_argument("--parsing-mode", choices=("jaw", "raw", "neck"), default=lip_defaults.parsing_mode,
                         help="which face region is blended back (jaw: MuseTalk 1.5's default)")
    lipsync.add_argument("--batch-size", type=int, default=lip_defaults.batch_size, help="frames per UNet/VAE call")
    lipsync.add_argument("--weights-dir", default=None)
    lipsync.add_argument("--device", default=None)
    lipsync.add_argument("--cache-dir", default=None,
                         help="where per-video avatars are kept (default: $DYNAMICTRL_CACHE or ~/.cache/dynamictrl)")

    return parser


def frames_for_duration(seconds: float, fps: float) -> int:
    """The 4k+1 frame count closest to `seconds` of video at `fps`."""
    if seconds <= 0:
        raise ValueError(f"--duration must be positive, got {seconds}.")
    return 4 * max(1, round((seconds * fps - 1) / 4)) + 1


def run_generate(args) -> int:
    from .studio import GenerateSettings, Studio

    if args.duration is not None:
        args.frames = frames_for_duration(args.duration, args.fps)

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
        mask_mode=args.mask_mode,
        mask_fill=args.fill,
        offload=args.offload,
        fp8=args.fp8,
        int8=args.int8,
        first_block_cache=args.first_block_cache,
        pyramid_attention_broadcast=args.pab,
        compile=args.compile,
        fuse_qkv=args.fuse_qkv,
        t5_on_cpu=args.t5_on_cpu,
        window_frames=args.window_frames,
        overlap=args.overlap,
        color_match=not args.no_color_match,
    )
    studio = Studio(model=args.model, weights_dir=args.weights_dir, device=args.device)
    result = studio.generate(
        args.image,
        args.out,
        settings,
        pose_video_path=args.pose_video,
        driving_video_path=args.driving_video,
        # Driving frames are sampled at the output fps, so the motion keeps its real speed.
        pose_settings=pose_settings_from(args, args.frames, args.width, args.height, args.fps),
    )
    if result.pose is not None:
        print(f"Pose video: {result.pose.pose_video_path}" + filled_note(result.pose.filled_frames))
    print(f"Wrote {result.video_path} ({result.num_frames} frames) and {result.manifest_path} "
          f"in {result.elapsed_s:.1f} s")
    return 0


def filled_note(filled: int) -> str:
    return f" ({filled} driving frames had no person and reuse the previous pose)" if filled else ""


def run_pose(args) -> int:
    from .studio import Studio

    studio = Studio(weights_dir=args.weights_dir, device=args.device)
    result = studio.extract_poses(
        args.image,
        args.video,
        pose_settings_from(args, args.frames, args.width, args.height, args.fps),
        out_path=args.out,
        preview_path=args.preview,
        json_path=args.save_json,
    )
    written = [p for p in (result.pose_video_path, result.preview_path, result.json_path) if p]
    print("Wrote " + ", ".join(str(p) for p in written) + filled_note(result.filled_frames)
          + f" in {result.elapsed_s:.1f} s")
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
    result = studio.mask(args.image, args.mode, args.width, args.height, out_path=args.out,
                         mask_path=args.save_mask, points=points, dilate_px=args.dilate)
    print(f"Wrote {args.out} ({result.mask.mean():.0%} blacked out); generate with --variant "
          f"{'mask_background' if args.mode == 'background' else 'mask_clothing'} or --mask-mode {args.mode}")
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

    settings = LipSyncSettings(bbox_shift=args.bbox_shift, extra_margin=args.extra_margin,
                               parsing_mode=args.parsing_mode, batch_size=args.batch_size)
    studio = Studio(weights_dir=args.weights_dir, device=args.device, cache_dir=args.cache_dir)
    progress = TqdmProgress("lip-sync")
    try:
        result = studio.lipsync(args.video, args.audio, args.out, settings, progress=progress)
    finally:
        progress.close()
    print(f"Wrote {result.video_path} and {result.manifest_path} in {result.elapsed_s:.1f} s. {result.report.summary()}")
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


def run_download(args) -> int:
    variants = sorted(weights.VARIANTS) if args.all else [args.variant] if args.variant else []
    repos = [weights.BASE_REPO] + [weights.variant_repo(v) for v in variants]
    if args.captioner or args.all:
        repos.append({"2b": "Qwen/Qwen2-VL-2B-Instruct", "7b": "Qwen/Qwen2-VL-7B-Instruct"}[args.captioner or "2b"])
    for repo in repos:
        print(f"{repo} is in {weights.download(repo, args.weights_dir)}")
    if args.dwpose or args.all:
        path = weights.resolve_files(weights.DWPOSE_REPO, weights.DWPOSE_FILES, args.weights_dir)
        print(f"{weights.DWPOSE_REPO} is in {path}")
    if args.sam or args.all:
        print(f"SAM {args.sam or 'vit_b'} is {weights.resolve_sam(args.sam or 'vit_b', args.weights_dir)}")
    if args.lipsync or args.all:
        for repo, files in weights.LIPSYNC_WEIGHTS.items():
            print(f"{repo} is in {weights.resolve_files(repo, files, args.weights_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {
            "generate": run_generate,
            "pose": run_pose,
            "caption": run_caption,
            "mask": run_mask,
            "download": run_download,
            "lipsync": run_lipsync,
            "prepare-data": run_prepare_data,
            "evaluate": run_evaluate,
            "train": run_train,
            "serve": run_serve,
            "batch": run_batch,
        }
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        # Input, output and weight problems are the user's to fix: a clear line, no traceback.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        # The system refused (permissions, a full disk, a vanished file): the user's to fix too.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    """The error's message on one line (messages are written as one; a library's may not be)."""
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
