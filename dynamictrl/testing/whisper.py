"""A tiny, randomly initialised Whisper checkpoint in the `openai/whisper-tiny` folder layout.

`save_tiny_whisper(folder)` writes config.json, generation_config.json, model.safetensors
and preprocessor_config.json with `save_pretrained`, so tests load it back through the same
`WhisperAudioEncoder.from_pretrained` a user runs on the real weights. The encoder has
whisper-tiny's shape where the lip-sync code depends on it (d_model 384, 4 layers, 6 heads,
80 mel bins, 1500 positions, so 5 hidden states of [1500, 384] per 30 s); the feed-forward
width and the whole decoder are shrunk to keep the file small and the tests fast.
"""

from pathlib import Path

import torch
from transformers import (
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

ENCODER_SHAPE = {
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
}


def save_tiny_whisper(folder: str | Path, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = WhisperConfig(
        **ENCODER_SHAPE,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=6,
        decoder_ffn_dim=64,
        vocab_size=64,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    torch.manual_seed(seed)
    # Saved as the hub checkpoint is (WhisperForConditionalGeneration, keys "model.encoder.*"), so
    # loading exercises the prefix handling of WhisperModel.from_pretrained.
    WhisperForConditionalGeneration(config).eval().save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder
