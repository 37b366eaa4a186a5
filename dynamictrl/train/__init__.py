"""DynamiCtrl training: supervised fine-tuning (full or LoRA) on a `prepare-data` folder.

    accelerate launch -m dynamictrl train --config configs/sft.yaml

Heavy imports (torch, diffusers, peft) happen on first use of `train`/`Trainer`, so
`python -m dynamictrl --help` stays fast.
"""

from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "TrainResult", "Trainer", "load_config", "train"]


def __getattr__(name):
    if name in ("train", "Trainer", "TrainResult"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
