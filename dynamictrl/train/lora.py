"""LoRA (peft) on the DynamiCtrl transformer: the light alternative to full fine-tuning.

Adapters go on the attention projections and the PadaLN modulation of every block
(`lora.target_modules`). Only the adapter weights are saved, in diffusers' LoRA format
(`pytorch_lora_weights.safetensors`, keys `transformer.<module>.lora_A/B.weight`, the
LoraConfig in the file's metadata), so a run loads back with
`pipe.load_lora_weights(folder)` or `load_lora(transformer, folder)`.
"""

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from ..pipeline import DynamiCtrlPipeline
from .config import ConfigError, LoraSettings

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER = "default"


def add_lora(transformer, settings: LoraSettings) -> LoraConfig:
    """Freezes the transformer and adds a trainable adapter (lora_B starts at zero, so the
    model's output is unchanged at step 0)."""
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        init_lora_weights=True,
        target_modules=list(settings.target_modules),
    )
    try:
        transformer.add_adapter(config, adapter_name=ADAPTER)
    except ValueError as error:
        message = f"lora.target_modules {settings.target_modules} do not fit the transformer: {error}"
        raise ConfigError(message) from error
    for parameter in transformer.parameters():
        if parameter.requires_grad:
            # Adapters train in float32 even on a bf16 base: their updates are tiny.
            parameter.data = parameter.data.float()
    return config


def lora_state_dict(transformer) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(transformer, adapter_name=ADAPTER)


def save_lora(transformer, folder: str | Path) -> Path:
    """Writes only the adapter weights (+ their LoraConfig) to `folder`."""
    folder = Path(folder)
    config = transformer.peft_config[ADAPTER]
    DynamiCtrlPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=config.to_dict(),
        safe_serialization=True,
    )
    return folder / LORA_WEIGHT_NAME


def load_lora_into_trainable(transformer, folder: str | Path) -> None:
    """Restores adapter weights saved by `save_lora` into a transformer that already has
    the adapter (resuming a LoRA run)."""
    state = load_file(str(Path(folder) / LORA_WEIGHT_NAME))
    prefix = f"{DynamiCtrlPipeline.transformer_name}."
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{folder}: {len(unexpected)} LoRA weights match no adapter module, e.g. {unexpected[0]}.")


def load_lora(transformer, folder: str | Path, adapter_name: str = "dynamictrl_lora", scale: float = 1.0):
    """Adds the adapter saved in `folder` (by training) to an inference transformer.
    `scale` weighs the adapter (1.0: as trained; 0: the base model)."""
    transformer.load_lora_adapter(
        str(folder), weight_name=LORA_WEIGHT_NAME, prefix=DynamiCtrlPipeline.transformer_name, adapter_name=adapter_name
    )
    if scale != 1.0:
        transformer.set_adapters([adapter_name], weights=[scale])
    return transformer
