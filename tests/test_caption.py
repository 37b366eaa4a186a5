"""Captioner on a tiny random Qwen2-VL saved in the hub layout, plus the text helpers.

The random model writes arbitrary text, so the tests check the mechanics (real
`generate` path, determinism, token budget, prompt stripping, T5 fitting, placeholders),
not caption quality.
"""

import logging

import numpy as np
import pytest
from PIL import Image

from dynamictrl import caption as cap
from dynamictrl.images import to_rgb_image
from dynamictrl.weights import WeightsNotFoundError


@pytest.fixture(scope="session")
def qwen_weights(tmp_path_factory):
    from dynamictrl.testing.qwen import save_tiny_qwen

    root = tmp_path_factory.mktemp("qwen_weights")
    save_tiny_qwen(root)
    return root


@pytest.fixture(scope="session")
def captioner(qwen_weights):
    # The same call the app makes, pointed at the tiny weights folder.
    return cap.Captioner.from_pretrained(weights_dir=qwen_weights, local_files_only=True, device="cpu")


@pytest.fixture(scope="session")
def t5_tokenizer():
    from dynamictrl.testing.models import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8))


@pytest.fixture
def generate_spy(captioner, monkeypatch):
    """Records the kwargs and the output of every `model.generate` call."""
    calls = []
    original = captioner.model.generate

    def spy(**kwargs):
        output = original(**kwargs)
        calls.append({"kwargs": kwargs, "output": output})
        return output

    monkeypatch.setattr(captioner.model, "generate", spy)
    return calls


# ---------------------------------------------------------------- model path
def test_loads_qwen2_vl_through_weights_resolve(captioner, qwen_weights):
    import torch
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    assert isinstance(captioner.model, Qwen2VLForConditionalGeneration)
    assert isinstance(captioner.processor, Qwen2VLProcessor)
    assert captioner.processor.video_processor is not None  # transformers 5 requires one
    assert captioner.model.dtype == torch.float32  # fp32 on CPU
    assert captioner.device.type == "cpu"
    # "2b" is an alias of the default repo, resolved to the same folder.
    again = cap.Captioner.from_pretrained("2b", weights_dir=qwen_weights, local_files_only=True, device="cpu")
    assert again.model.config.text_config.hidden_size == captioner.model.config.text_config.hidden_size


def test_caption_is_deterministic_and_honours_max_new_tokens(captioner, reference, generate_spy):
    first = captioner.caption(reference, max_new_tokens=6)
    second = captioner.caption(reference, max_new_tokens=6)
    assert isinstance(first.text, str) and first.text
    assert first == second
    assert first.generated_tokens == 6 and first.hit_token_limit
    assert first.t5_tokens is None and not first.truncated  # no T5 tokenizer given
    for call in generate_spy:
        assert call["kwargs"]["do_sample"] is False
        prompt_length = call["kwargs"]["input_ids"].shape[1]
        assert call["output"].shape[1] - prompt_length == 6

    short = captioner.caption(reference, max_new_tokens=2)
    assert short.generated_tokens == 2
    assert generate_spy[-1]["output"].shape[1] - generate_spy[-1]["kwargs"]["input_ids"].shape[1] == 2


def test_prompt_tokens_are_stripped(captioner, reference, generate_spy):
    result = captioner.caption(reference, max_new_tokens=8)
    call = generate_spy[-1]
    input_ids = call["kwargs"]["input_ids"][0]
    tokenizer = captioner.processor.tokenizer
    prompt = tokenizer.decode(input_ids)
    # The prompt held the chat turns, the image pads and the official instruction...
    assert cap.OFFICIAL_INSTRUCTION in prompt and "<|image_pad|>" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    # ...and the caption is exactly the decoded answer tokens, cleaned.
    answer = call["output"][0, len(input_ids) :]
    assert result.text == cap.clean_caption(tokenizer.decode(answer, skip_special_tokens=True))
    assert cap.OFFICIAL_INSTRUCTION not in result.text and "<|" not in result.text


def test_caption_with_t5_tokenizer_reports_the_count(captioner, reference, t5_tokenizer):
    result = captioner.caption(reference, max_new_tokens=8, t5_tokenizer=t5_tokenizer)
    assert result.t5_tokens == cap.t5_token_count(result.text, t5_tokenizer)
    assert result.t5_tokens <= cap.T5_MAX_TOKENS


def test_bad_arguments_are_refused(captioner, reference):
    with pytest.raises(ValueError, match="max_new_tokens"):
        captioner.caption(reference, max_new_tokens=0)
    with pytest.raises(ValueError, match="instruction"):
        captioner.caption(reference, instruction="  ")
    with pytest.raises(ValueError, match="16 to 8192"):
        captioner.caption(Image.new("RGB", (15, 64)))


def test_missing_weights_offline_name_the_download_command(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        cap.Captioner.from_pretrained(weights_dir=tmp_path, local_files_only=True)
    message = str(error.value)
    assert f"python -m dynamictrl download qwen2vl_2b --weights-dir {tmp_path}" in message
    assert str(tmp_path / "Qwen2-VL-2B-Instruct") in message
    with pytest.raises(WeightsNotFoundError, match="Qwen2-VL-7B-Instruct"):
        cap.Captioner.from_pretrained("7b", weights_dir=tmp_path, local_files_only=True)


def test_works_as_a_managed_model(captioner, reference):
    from dynamictrl.manager import ModelManager, module_bytes

    manager = ModelManager(device="cpu")
    manager.register("caption", lambda: captioner)
    with manager.use("caption") as model:
        assert model.caption(reference, max_new_tokens=3).generated_tokens == 3
    # `components` lets the manager count (and move) the model inside the Captioner.
    assert manager.loaded_bytes() == module_bytes(captioner.model) > 0


# ---------------------------------------------------------------- T5 fitting
def test_short_text_is_untouched(t5_tokenizer):
    fit = cap.fit_to_t5("A woman in a red dress.", t5_tokenizer)
    assert fit == ("A woman in a red dress.", False, cap.t5_token_count("A woman in a red dress.", t5_tokenizer))


def test_long_text_is_cut_at_a_sentence_end_and_flagged(t5_tokenizer, caplog):
    text = " ".join(f"A woman in a red dress is dancing in park number {i}." for i in range(40))
    assert cap.t5_token_count(text, t5_tokenizer) > cap.T5_MAX_TOKENS
    with caplog.at_level(logging.WARNING, logger="dynamictrl.caption"):
        fit = cap.fit_to_t5(text, t5_tokenizer)
    assert fit.truncated and fit.tokens <= cap.T5_MAX_TOKENS
    assert fit.tokens == cap.t5_token_count(fit.text, t5_tokenizer)
    assert text.startswith(fit.text) and fit.text.endswith(".")
    assert text[len(fit.text)] == " "  # a whole sentence, nothing half-cut
    assert "cut from" in caplog.text


def test_text_without_sentences_is_cut_at_a_word(t5_tokenizer):
    text = " ".join(["red", "blue", "park", "woman,"] * 100)
    fit = cap.fit_to_t5(text, t5_tokenizer)
    assert fit.truncated and fit.tokens <= cap.T5_MAX_TOKENS
    body = fit.text.removesuffix(".")  # a full stop is added when it still fits
    assert text.startswith(body) and text[len(body)] in " ,"  # ends on a whole word...
    assert body[-1].isalpha()  # ...without the dangling comma
    # One endless "word" still fits, cut at a token boundary.
    fit = cap.fit_to_t5("x" * 1000, t5_tokenizer, max_tokens=50)
    assert fit.truncated and 0 < fit.tokens <= 50
    with pytest.raises(ValueError, match="no room"):
        cap.fit_to_t5(text, t5_tokenizer, max_tokens=0)


# ---------------------------------------------------------------- masked references
@pytest.mark.parametrize("mode", cap.MASK_MODES)
def test_masked_caption_ends_with_the_placeholder(captioner, reference, generate_spy, t5_tokenizer, mode):
    result = captioner.caption_masked(reference, mode, max_new_tokens=5)
    assert result.text.endswith(cap.PLACEHOLDERS[mode])
    assert cap.has_placeholder(result.text)
    prompt = captioner.processor.tokenizer.decode(generate_spy[-1]["kwargs"]["input_ids"][0])
    assert cap.MASKED_INSTRUCTIONS[mode] in prompt
    # With a tight T5 budget the visible caption is cut, never the placeholder.
    budget = cap.t5_token_count(cap.PLACEHOLDERS[mode], t5_tokenizer) + 12
    fitted = captioner.caption_masked(
        reference, mode, max_new_tokens=40, t5_tokenizer=t5_tokenizer, max_t5_tokens=budget
    )
    assert fitted.truncated and fitted.text.endswith(" " + cap.PLACEHOLDERS[mode]) and fitted.t5_tokens <= budget


def test_masked_caption_drops_sentences_about_the_masked_region(monkeypatch):
    captioner = cap.Captioner(model=None, processor=None)
    answer = "A woman with long hair dances. The background is completely black. She smiles."
    monkeypatch.setattr(captioner, "_generate", lambda image, instruction, max_new_tokens: (answer, 12, False))
    result = captioner.caption_masked(None, "background")
    assert result.text == "A woman with long hair dances. She smiles. " + cap.BACKGROUND_PLACEHOLDER
    with pytest.raises(ValueError, match="mask_mode"):
        captioner.caption_masked(None, "face")


def test_placeholder_detection():
    assert cap.has_placeholder("A man. " + cap.CLOTHING_PLACEHOLDER)
    assert cap.has_placeholder("A man. [describe the new background HERE]")
    assert not cap.has_placeholder("A man in a blue suit on a beach.")
    assert not cap.has_placeholder("")
    with pytest.raises(ValueError, match="placeholder"):
        cap.check_no_placeholder("A man. " + cap.BACKGROUND_PLACEHOLDER)
    cap.check_no_placeholder("A man on a beach.")


# ---------------------------------------------------------------- consistency hint
@pytest.mark.parametrize(
    "auto, edited, missing",
    [
        ("A woman in a red dress in a park.", "A woman in a blue dress in a park.", ["red"]),
        ("A woman in a red dress in a park.", "a WOMAN in a red dress in a park", []),
        (
            "A man with short brown hair wearing a white shirt stands on a street.",
            "A man with short hair wearing a black shirt stands on a beach.",
            ["brown", "white", "street"],
        ),
        ("Two women in dresses and shoes.", "Two women in a dress and a shoe.", []),
        ("A red car and a red bus near a park.", "A car near a park.", ["red", "bus"]),
        ("The image shows a woman. The background is a park.", "A woman in a park.", []),
        ("A woman in a red dress. " + cap.BACKGROUND_PLACEHOLDER, "A woman in a red dress on a beach.", []),
    ],
)
def test_consistency_hint(auto, edited, missing):
    assert cap.consistency_hint(auto, edited) == missing


# ---------------------------------------------------------------- images
def test_rgba_transparent_pixels_become_black():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:10, :, 3] = 255  # top half opaque, bottom half transparent
    out = np.asarray(to_rgb_image(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (20, 20, 3)
    assert (out[:10] == 200).all() and (out[10:] == 0).all()


def test_modes_are_converted_to_8bit_rgb(tmp_path):
    gray16 = Image.fromarray(np.full((20, 30), 32896, np.uint16))  # mid-grey in 16 bits
    assert gray16.mode.startswith("I;16")
    out = to_rgb_image(gray16)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert np.asarray(out)[0, 0].tolist() == [128, 128, 128]  # scaled, not clipped to 255

    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(to_rgb_image(cmyk))[0, 0].tolist() == [255, 0, 0]
    assert to_rgb_image(Image.new("L", (20, 20), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb_image(Image.new("1", (20, 20), 1)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb_image(Image.new("P", (20, 20))).mode == "RGB"

    array16 = np.full((20, 20, 3), 65535, np.uint16)
    assert np.asarray(to_rgb_image(array16))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(to_rgb_image(np.full((20, 20, 3), 0.5, np.float32)))[0, 0].tolist() == [128, 128, 128]

    path = tmp_path / "grey16.png"
    gray16.save(path)
    assert np.asarray(to_rgb_image(path))[0, 0].tolist() == [128, 128, 128]


def test_sizes_outside_16_to_8192_are_refused(tmp_path):
    for size in [(15, 100), (100, 15), (8193, 16), (16, 8193)]:
        with pytest.raises(ValueError, match="16 to 8192"):
            to_rgb_image(Image.new("L", size))
    with pytest.raises(ValueError, match="16 to 8192"):
        to_rgb_image(np.zeros((10, 40, 3), np.uint8))
    path = tmp_path / "wide.png"
    Image.new("L", (8193, 16)).save(path)
    with pytest.raises(ValueError, match="16 to 8192"):
        to_rgb_image(path)
    with pytest.raises(ValueError, match="not found"):
        to_rgb_image(tmp_path / "missing.png")
    to_rgb_image(Image.new("RGB", (16, 8192)))  # the bounds themselves are fine


def test_large_images_are_downscaled_to_the_pixel_budget():
    image = Image.new("RGB", (4000, 2000))
    small = cap._limit_pixels(image, cap.DEFAULT_MAX_PIXELS)
    assert small.width * small.height <= cap.DEFAULT_MAX_PIXELS
    assert abs(small.width / small.height - 2.0) < 0.01
    assert cap._limit_pixels(Image.new("RGB", (576, 1024)), cap.DEFAULT_MAX_PIXELS).size == (576, 1024)


def test_clean_caption():
    assert cap.clean_caption("  The **woman**\n\nwears\x00 a red\tdress.\ufffd ") == "The woman wears a red dress."
