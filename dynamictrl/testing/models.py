"""Tiny, randomly initialised DynamiCtrl checkpoints saved in the real hub layout.

`save_tiny_checkpoints(root)` writes
    root/DynamiCtrl/{tokenizer,text_encoder,vae,transformer,scheduler}/   (gulucaptain/DynamiCtrl)
    root/Dynamictrl-Mask_B01/{config.json,diffusion_pytorch_model.safetensors}
    root/Dynamictrl-Mask_C01/...
with `save_pretrained`, so tests load them back through the same `from_pretrained`
code a user runs on the 5B weights.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from ..models import DynamiCtrlTransformerModel

TRANSFORMER_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=8,
    out_channels=4,
    time_embed_dim=16,
    ofs_embed_dim=16,
    text_embed_dim=32,
    num_layers=2,
    sample_width=8,
    sample_height=10,
    sample_frames=13,
    patch_size=2,
    patch_size_t=2,
    max_text_seq_length=226,
    use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=False,
    patch_bias=False,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["CogVideoXDownBlock3D"] * 4,
    up_block_types=["CogVideoXUpBlock3D"] * 4,
    block_out_channels=[8, 8, 8, 8],
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=2,
    temporal_compression_ratio=4,
    scaling_factor=0.7,
    invert_scale_latents=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=True,
    snr_shift_scale=1.0,
    timestep_spacing="trailing",
    clip_sample=False,
)

WORDS = "a person dancing man woman in red blue dress shirt jacket park street studio background white black".split()


def build_tokenizer() -> T5Tokenizer:
    """A T5 (unigram) tokenizer built in memory: specials, then words and letters."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + word, -1.0) for word in WORDS]
    vocab += [(char, -5.0) for char in "abcdefghijklmnopqrstuvwxyz,."]
    vocab += [("\u2581", -2.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_text_encoder(vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return T5EncoderModel(config).eval()


def build_transformer(seed: int) -> DynamiCtrlTransformerModel:
    torch.manual_seed(seed)
    return DynamiCtrlTransformerModel(**TRANSFORMER_CONFIG).eval()


def save_shared_parts(base: str | Path, seed: int = 0) -> Path:
    """Tokenizer, T5, VAE, scheduler and model_index.json of `base` (the
    gulucaptain/DynamiCtrl folder): everything but the transformer."""
    base = Path(base)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(base / "tokenizer")
    build_text_encoder(len(tokenizer)).save_pretrained(base / "text_encoder")
    AutoencoderKLCogVideoX(**VAE_CONFIG).save_pretrained(base / "vae")
    CogVideoXDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    # The hub's model_index.json names the authors' own module; we never read it, but
    # keep the layout identical.
    index = {
        "_class_name": "DynamiCtrlPipeline",
        "tokenizer": ["transformers", "T5Tokenizer"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
        "scheduler": ["diffusers", "CogVideoXDPMScheduler"],
        "transformer": ["dynamictrl", "DynamiCtrlTransformerModel"],
    }
    (base / "model_index.json").write_text(json.dumps(index, indent=2))
    return base


def save_tiny_checkpoints(root: str | Path, seed: int = 0) -> Path:
    root = Path(root)
    base = save_shared_parts(root / "DynamiCtrl", seed)
    build_transformer(seed + 1).save_pretrained(base / "transformer")
    build_transformer(seed + 2).save_pretrained(root / "Dynamictrl-Mask_B01")
    build_transformer(seed + 3).save_pretrained(root / "Dynamictrl-Mask_C01")
    return root
