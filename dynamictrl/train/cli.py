"""The `train` subcommand: `python -m dynamictrl train --config configs/sft.yaml [--set k=v ...]`.

Launch it through accelerate for mixed precision and several GPUs:
    accelerate launch -m dynamictrl train --config configs/sft.yaml
    accelerate launch --config_file configs/accelerate_zero2.yaml -m dynamictrl train --config configs/sft.yaml
"""

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="training config (YAML), e.g. configs/sft.yaml or configs/lora.yaml"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.max_steps=100 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint of the output folder, or from CHECKPOINT",
    )
    parser.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=...")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config and the data folder, print the plan, and exit (loads no model)",
    )


def build_config(args):
    from .config import load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.resume:
        overrides.append(f"train.resume_from_checkpoint={args.resume}")
    return load_config(args.config, overrides)


def describe(config) -> str:
    from .dataset import ClipDataset

    clips = ClipDataset(config.data.data_dir, config.data.num_frames, config.clip_stride, config.data.use_masks)
    height, width = clips.size
    t = config.train
    mode = f"LoRA rank {config.lora.rank}" if config.lora.enabled else "full SFT"
    return (
        f"{mode} of {config.model.transformer or config.model.variant or config.model.pretrained}\n"
        f"data: {len(clips.manifest.items)} items -> {len(clips)} clips of {config.data.num_frames} frames at "
        f"{width}x{height} ({len(clips.too_short)} items too short)\n"
        f"steps: {t.max_steps} x batch {t.batch_size} x accumulation {t.gradient_accumulation_steps} per process, "
        f"lr {t.learning_rate:g} ({t.lr_scheduler}, warmup {t.lr_warmup_steps}), {t.mixed_precision}\n"
        f"image latent x{t.image_latent_scale:g}, output: {config.output_dir}"
    )


def run(args) -> int:
    config = build_config(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("dynamictrl.train").setLevel(logging.INFO)
    if args.check:
        print(describe(config))
        return 0
    from .trainer import train

    result = train(config)
    if result.weights_path is not None:
        print(f"Trained {result.global_step} steps; weights in {result.weights_path}")
    return 0
