"""A tiny, randomly initialised Qwen2-VL checkpoint saved in the real hub layout.

`save_tiny_qwen(root)` writes `root/Qwen2-VL-2B-Instruct/` (config.json, safetensors,
generation_config.json, tokenizer files, preprocessor / video preprocessor configs and
the chat template) with `save_pretrained`, so tests load it back through the same
`from_pretrained` code (and `weights.resolve`) a user runs on the 2B weights.

Nothing here is downloaded: the byte-level BPE tokenizer is built in memory from the
256-symbol byte alphabet plus a few hand-made merges, and the processor is assembled from
its parts (transformers 5's Qwen2VLProcessor insists on a video processor, which needs
torchvision, even when only images are captioned).
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

FOLDER_NAME = "Qwen2-VL-2B-Instruct"  # weights/<repo-name> of Qwen/Qwen2-VL-2B-Instruct

# The special tokens the chat template and the processor reference, in the order of the
# real vocabulary (<|endoftext|> first; the vision markers after the chat markers).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The BPE merges are learned from these words, so the chat prompt tokenises into whole
# words like the real vocabulary does; anything else still encodes byte by byte.
TRAINING_WORDS = (
    "system user assistant You are a helpful Describe the person and background "
    "woman man in red blue dress shirt park street"
)

# Qwen2-VL-style chat template, written for these tests: an optional default system turn,
# `<|vision_start|><|image_pad|><|vision_end|>` for every image entry (the processor
# expands the single pad into one pad per merged patch), text entries verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Pixel budget of the tiny processor: the factor is patch 14 x merge 2 = 28, so every
# image becomes between 2x2 and 3x3 merged tokens (56..84 px a side): a few ms per call.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 84 * 84


def build_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE: the 256 byte symbols plus merges learned (deterministically, in
    memory) from TRAINING_WORDS, then the special tokens. Handed to Qwen2Tokenizer as a
    vocabulary + merge list, so it is the real Qwen2 tokenizer class, just tiny."""
    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,  # an upper bound: training stops once no pair repeats
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # replaces bytes_to_unicode
        show_progress=False,
    )
    trainer_tokenizer.train_from_iterator([TRAINING_WORDS] * 4, trainer)
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = dict(trained["vocab"])
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in trained["merges"]],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    # Patch, temporal patch and merge sizes must equal the vision config's.
    sizes = dict(patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**sizes),
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: Qwen2Tokenizer, seed: int = 0) -> Qwen2VLForConditionalGeneration:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    hidden = 32
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            # mrope splits the rotary half of the head dim (16 / 2 = 8) into t, h, w parts.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            num_heads=2,  # head dim 16: the axial rope needs a multiple of 4
            mlp_ratio=2,
            hidden_size=hidden,  # the patch merger projects into the text width
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Zero logits for every special token: a random model then (almost surely) always
        # prefers an ordinary token, never stops early at <|im_end|>, and decodes to
        # visible text, so tests can count exactly max_new_tokens generated tokens.
        for token_id in ids.values():
            model.lm_head.weight[token_id] = 0.0
    # The released Instruct checkpoints ship a sampling config (temperature 0.01, top_k 1);
    # mirror it so the Captioner's explicit greedy decoding is exercised against it.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=0.01,
        top_p=0.001,
        top_k=1,
    )
    return model


def save_tiny_qwen(root: str | Path, seed: int = 0) -> Path:
    """Writes `root/Qwen2-VL-2B-Instruct/` and returns that folder."""
    folder = Path(root) / FOLDER_NAME
    tokenizer = build_tokenizer()
    build_processor(tokenizer).save_pretrained(folder)
    build_model(tokenizer, seed).save_pretrained(folder)
    return folder
