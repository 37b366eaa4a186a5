"""Training config and the `train` command line: no model is loaded here."""

import argparse
import json
from pathlib import Path

import pytest
import yaml

from dynamictrl.train import cli as train_cli
from dynamictrl.train.config import Config, ConfigError, config_from_dict, load_config
from tests.test_train_data import make_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_official_recipe():
    t = Config().train
    assert (t.learning_rate, t.adam_beta1, t.adam_beta2) == (5e-6, 0.9, 0.95)
    assert (t.weight_decay, t.max_grad_norm) == (1e-3, 1.0)
    assert t.lr_scheduler == "cosine_with_restarts" and t.mixed_precision == "bf16" and t.gradient_checkpointing
    assert t.image_dropout == 0.05 and t.image_latent_scale == 1.0
    assert (t.image_noise_log_sigma_mean, t.image_noise_log_sigma_std) == (-3.0, 0.5)
    assert Config().data.num_frames == 37 and not Config().lora.enabled


def test_shipped_configs_load_and_agree_with_the_defaults():
    sft = load_config(CONFIGS / "sft.yaml")
    assert sft.train == Config().train.__class__(**{**Config().train.__dict__, "output_dir": "outputs/train-sft"})
    lora = load_config(CONFIGS / "lora.yaml")
    assert lora.lora.enabled and lora.lora.rank == 64
    assert "control_norm1.linear" in lora.lora.target_modules and "to_q" in lora.lora.target_modules
    ds = json.loads((CONFIGS / "deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == sft.train.max_grad_norm
    accel = yaml.safe_load((CONFIGS / "accelerate_zero2.yaml").read_text())
    assert accel["distributed_type"] == "DEEPSPEED"
    assert accel["deepspeed_config"]["deepspeed_config_file"] == "configs/deepspeed_zero2.json"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, "Did you mean 'train'"),
        ({"train": {"learning_rat": 1e-5}}, "Did you mean 'train.learning_rate'"),
        ({"data": {"num_frames": 36}}, r"must be 4k\+1"),
        ({"train": {"mixed_precision": "fp8"}}, "mixed_precision"),
        ({"train": {"learning_rate": "fast"}}, "must be a number"),
        ({"train": {"max_steps": 1.5}}, "must be an integer"),
        ({"train": {"image_dropout": 1.5}}, "image_dropout"),
        ({"model": {"variant": "mask_hair"}}, "Unknown variant"),
        ({"lora": {"enabled": True, "rank": 0}}, "lora.rank"),
        ({"train": {"lr_scheduler": "warp"}}, "lr_scheduler"),
    ],
)
def test_invalid_configs_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_yaml_numbers_without_a_dot_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 5e-6\n  max_grad_norm: null\n")  # PyYAML reads 5e-6 as a string
    config = load_config(path, ["train.max_steps=7", "lora.enabled=true", "lora.target_modules=[to_q, to_v]"])
    assert config.train.learning_rate == 5e-6 and config.train.max_grad_norm is None
    assert config.train.max_steps == 7 and config.lora.enabled and config.lora.target_modules == ["to_q", "to_v"]
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["max_steps"])


def test_command_line(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", items=(("a", 9), ("b", 13)))
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--config",
            str(CONFIGS / "lora.yaml"),
            "--set",
            f"data.data_dir={root}",
            "--set",
            "data.num_frames=9",
            "--set",
            "data.clip_stride=4",
            "--output-dir",
            str(tmp_path / "out"),
            "--resume",
            "--check",
        ]
    )
    config = train_cli.build_config(args)
    assert config.train.resume_from_checkpoint == "latest" and config.train.output_dir == str(tmp_path / "out")
    assert train_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "LoRA rank 64" in out and "2 items -> 3 clips of 9 frames at 32x32" in out
    with pytest.raises(ConfigError, match="not found"):
        train_cli.build_config(parser.parse_args(["--config", str(tmp_path / "nope.yaml")]))
