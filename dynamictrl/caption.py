"""Prompts for reference images, written by Qwen2-VL the way the DynamiCtrl authors wrote theirs.

DynamiCtrl was trained on captions that Qwen2-VL wrote for the reference image with
"Describe the person and the background." (up to 128 new tokens), and a prompt that
contradicts the image degrades the video (paper, Fig. 6). So the app and the CLI offer an
automatic caption, made here with the same model, instruction and token budget:

- `Captioner.caption(image)`: greedy (deterministic) Qwen2-VL caption, cleaned, and cut
  to the 226 tokens the T5 text encoder reads when a T5 tokenizer is given.
- `Captioner.caption_masked(image, "background" | "clothing")`: for masked references
  (the region the user wants to replace is blacked out): describes only what is visible
  and appends a placeholder sentence the user must replace; `has_placeholder` lets the
  app/CLI refuse to generate while it is still there.
- `consistency_hint(auto, edited)`: the content words of the automatic caption that an
  edited prompt dropped, so the user can check the prompt still matches the image.

Qwen2-VL-2B-Instruct is the default (about 4.5 GB in bf16, next to the 5B video model);
7B is selectable. Weights come from `weights/Qwen2-VL-2B-Instruct` (see `weights.resolve`).
"""

import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from . import weights
from .images import MIN_SIDE, to_rgb_image
from .settings import MASK_MODES

logger = logging.getLogger(__name__)

QWEN2_VL_2B = "Qwen/Qwen2-VL-2B-Instruct"
QWEN2_VL_7B = "Qwen/Qwen2-VL-7B-Instruct"
# Short names accepted wherever a caption model is chosen (CLI flag, app dropdown).
CAPTION_MODELS = {"2b": QWEN2_VL_2B, "7b": QWEN2_VL_7B}
DEFAULT_CAPTION_MODEL = QWEN2_VL_2B  # the smaller one: it must fit beside DynamiCtrl

# What the authors asked Qwen2-VL for every training reference (tools/qwen.py).
OFFICIAL_INSTRUCTION = "Describe the person and the background."
DEFAULT_MAX_NEW_TOKENS = 128
# The pipeline encodes prompts with max_sequence_length=226 T5 tokens (</s> included);
# anything beyond is silently dropped by the tokenizer's truncation.
T5_MAX_TOKENS = 226

# Reference images outside this range are refused (same bounds as the video sizes).
# Vision tokens grow with the pixel count (one per 28x28 px); the authors' preprocessing
# allowed up to 16384 of them. Larger images are downscaled to about 1 MP (1280 tokens,
# the processor's own default budget) to bound memory and time; the official sizes
# (576x1024 = 0.59 MP, 768x1360 = 1.04 MP) pass unchanged.
DEFAULT_MAX_PIXELS = 1280 * 28 * 28

BACKGROUND_PLACEHOLDER = "[Describe the new background here.]"
CLOTHING_PLACEHOLDER = "[Describe the new clothing here.]"
PLACEHOLDERS = {"background": BACKGROUND_PLACEHOLDER, "clothing": CLOTHING_PLACEHOLDER}
# Masked references: the blacked-out region is exactly what the user replaces, so the
# caption must not describe it (a "black background" sentence would fight the new one).
MASKED_INSTRUCTIONS = {
    "background": "Describe the person. The background is blacked out: do not describe it.",
    "clothing": "Describe the person and the background. The person's clothing is blacked out: do not describe it.",
}
# Sentences mentioning these words can only be about the masked region; they are dropped
# from masked captions when the model mentions it anyway (unless nothing would be left).
_MASKED_REGION_WORDS = {
    "background": ("background", "backdrop"),
    "clothing": ("clothing", "clothes", "outfit", "garment", "garments"),
}
# Any "[Describe ...]" sentence counts as an unfilled placeholder, also hand-written ones.
PLACEHOLDER_PATTERN = re.compile(r"\[\s*describe\b[^\]]*\]", re.IGNORECASE)


@dataclass(frozen=True)
class CaptionResult:
    """A caption and how it was produced.

    `truncated`: the text was cut to fit T5's token limit (the tail would have been
    ignored by the text encoder anyway). `t5_tokens`: its T5 token count, </s> included
    (None when no T5 tokenizer was given). `generated_tokens`: Qwen2-VL tokens generated;
    `hit_token_limit`: generation stopped at `max_new_tokens`, so the last sentence may be
    unfinished (the authors' captions were cut the same way).
    """

    text: str
    truncated: bool = False
    t5_tokens: int | None = None
    generated_tokens: int = 0
    hit_token_limit: bool = False


class T5Fit(NamedTuple):
    text: str
    truncated: bool
    tokens: int  # T5 tokens of `text`, special tokens included


# ------------------------------------------------------------------------- images
def _limit_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    if not max_pixels or image.width * image.height <= max_pixels:
        return image
    scale = (max_pixels / (image.width * image.height)) ** 0.5
    size = (max(MIN_SIDE, int(image.width * scale)), max(MIN_SIDE, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


# ------------------------------------------------------------------------- text
def clean_caption(text: str) -> str:
    """One line of plain text: control characters, undecodable bytes (U+FFFD) and
    markdown emphasis removed, whitespace runs collapsed (T5 needs no line breaks)."""
    text = "".join(
        " " if char.isspace() else char
        for char in text
        if char.isspace() or (unicodedata.category(char)[0] != "C" and char != "\ufffd")
    )
    text = re.sub(r"\*\*|__|(^|\s)#+\s", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def t5_token_count(text: str, tokenizer) -> int:
    """Tokens the pipeline's T5 tokenizer makes of `text`, </s> included."""
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def fit_to_t5(text: str, tokenizer, max_tokens: int = T5_MAX_TOKENS) -> T5Fit:
    """`text` cut to at most `max_tokens` T5 tokens (special tokens included).

    The cut is at the last sentence end that keeps at least half of what fits, else at
    a word boundary (trailing commas etc. removed, a full stop added if it still fits).
    A cut is logged as a warning and flagged, because the text encoder would otherwise
    silently drop the tail.
    """
    specials = t5_token_count("", tokenizer)  # </s> for T5
    if max_tokens < specials:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for text (the special tokens alone take {specials}).")
    count = t5_token_count(text, tokenizer)
    if count <= max_tokens:
        return T5Fit(text, False, count)

    def fits(candidate: str) -> bool:
        return t5_token_count(candidate, tokenizer) <= max_tokens

    # Binary search over word prefixes: token counts grow with the number of words.
    word_ends = [match.end() for match in re.finditer(r"\S+", text)]
    fitting, too_many = 0, len(word_ends)  # zero words always fit; all words do not
    while too_many - fitting > 1:
        middle = (fitting + too_many) // 2
        if fits(text[: word_ends[middle - 1]]):
            fitting = middle
        else:
            too_many = middle
    if fitting == 0:
        # A single "word" longer than the budget (no spaces): cut at a token boundary.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max(0, max_tokens - specials)]
        cut = tokenizer.decode(ids, skip_special_tokens=True).strip()
    else:
        cut = text[: word_ends[fitting - 1]]
        sentence_ends = [match.end() for match in re.finditer(r"[.!?](?=\s|$)", cut)]
        if sentence_ends and sentence_ends[-1] >= len(cut) / 2:
            cut = cut[: sentence_ends[-1]]
        else:
            cut = cut.rstrip(" ,;:-\u2013\u2014(")
            if cut and cut[-1] not in ".!?" and fits(cut + "."):
                cut += "."
    cut_count = t5_token_count(cut, tokenizer)
    logger.warning(
        "Caption cut from %d to %d T5 tokens to fit the text encoder's %d-token limit.", count, cut_count, max_tokens
    )
    return T5Fit(cut, True, cut_count)


def has_placeholder(text: str) -> bool:
    """True while a "[Describe ... here.]" placeholder is still in the prompt."""
    return PLACEHOLDER_PATTERN.search(text or "") is not None


def check_no_placeholder(prompt: str) -> None:
    """Raises ValueError naming the placeholder, for the app/CLI before generating."""
    match = PLACEHOLDER_PATTERN.search(prompt or "")
    if match:
        raise ValueError(
            f"The prompt still contains the placeholder {match.group(0)!r}: replace it with a description "
            "of what should appear in the masked region."
        )


def _drop_sentences_about(text: str, words: tuple[str, ...]) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text)
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)
    kept = [sentence for sentence in sentences if not pattern.search(sentence)]
    return " ".join(kept) if kept else text


# ------------------------------------------------------------- consistency hint
# Function words and caption boilerplate ("The image shows ..."): never reported. Anything
# else of 3+ letters approximates a noun/adjective; colours count regardless of length.
STOPWORDS = frozenset(
    """
    a an the and or but nor so yet of in on at to for from with without by as into onto upon over under
    above below behind beside besides between near next against along across around through during
    before after up down out off about than then too very quite rather somewhat slightly really also
    just only even still both either neither each every all any some few many much more most other
    another such same own no not is are was were be been being am has have had having do does did
    doing will would can could may might shall should must it its it's this that these those there
    here he she they them him her hers his their theirs we us our you your i me my mine who whom
    whose which what where when while whereas how why one ones two three something someone
    image picture photo photograph shot frame scene view setting background foreground overall
    shows show showing shown depicts depict depicting features featuring appears appear appearing
    seems seem seeming visible looks look looking wearing wears dressed standing stands sitting sits
    posing poses facing seen captured appears possibly likely perhaps describe new
    """.split()
)
COLOURS = frozenset(
    """
    red orange yellow green blue purple violet pink brown black white gray grey beige tan navy teal
    turquoise maroon burgundy crimson scarlet gold golden silver cream ivory khaki olive lavender
    lilac magenta cyan aqua coral peach mint charcoal blond blonde brunette auburn
    """.split()
)
_WORD = re.compile(r"[A-Za-z]+(?:['\u2019-][A-Za-z]+)*")


def _words(text: str) -> list[str]:
    words = []
    for word in _WORD.findall(PLACEHOLDER_PATTERN.sub(" ", text or "")):
        word = word.lower().replace("\u2019", "'")
        if word.endswith("'s"):
            word = word[:-2]
        words.append(word)
    return words


def _stem(word: str) -> str:
    """Crude plural folding so "dresses" matches "dress" and "shoes" matches "shoe"."""
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _is_content(word: str) -> bool:
    if word in COLOURS:
        return True
    return len(word) >= 3 and word not in STOPWORDS


def consistency_hint(auto_caption: str, edited: str) -> list[str]:
    """Content words of `auto_caption` (lower case, first-appearance order, no repeats)
    that `edited` no longer contains: what the user may have changed so that the prompt
    no longer matches the image. Empty when nothing is missing. Placeholders are ignored.
    """
    present = {_stem(word) for word in _words(edited)}
    missing, seen = [], set()
    for word in _words(auto_caption):
        stem = _stem(word)
        if stem in seen or not _is_content(word):
            continue
        seen.add(stem)
        if stem not in present:
            missing.append(word)
    return missing


# ------------------------------------------------------------------------- model
class Captioner:
    """Qwen2-VL captions for reference images.

    Build with `Captioner.from_pretrained()` (resolves `weights/Qwen2-VL-2B-Instruct`,
    bf16 on CUDA, fp32 on CPU) or from an already loaded model + processor. For the
    `ModelManager`, `components` exposes the model so the manager can count its bytes and
    move it between CPU and GPU: `manager.register("caption", Captioner.from_pretrained)`.
    """

    def __init__(self, model, processor, t5_tokenizer=None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.model = model
        self.processor = processor
        self.t5_tokenizer = t5_tokenizer  # e.g. the DynamiCtrl pipeline's tokenizer
        self.max_pixels = max_pixels

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path = DEFAULT_CAPTION_MODEL,
        weights_dir: str | Path | None = None,
        local_files_only: bool = False,
        device: str | None = None,
        dtype=None,
        t5_tokenizer=None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> "Captioner":
        """Loads Qwen2-VL from a folder, `weights/<repo-name>`, or the hub (via
        `weights.resolve`; offline and missing raises `WeightsNotFoundError` naming the
        download command). `path_or_repo_id` may also be "2b" or "7b"."""
        import torch
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        path_or_repo_id = CAPTION_MODELS.get(str(path_or_repo_id).lower(), path_or_repo_id)
        folder = weights.resolve(path_or_repo_id, weights_dir, local_files_only)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            # bf16 halves memory on GPUs; CPUs are slow and inexact in bf16 matmuls.
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True)
        model.eval().to(device)
        return cls(model, processor, t5_tokenizer=t5_tokenizer, max_pixels=max_pixels)

    @property
    def components(self) -> dict:
        return {"model": self.model}

    @property
    def device(self):
        return self.model.device

    def caption(
        self,
        image,
        instruction: str = OFFICIAL_INSTRUCTION,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        t5_tokenizer=None,
        max_t5_tokens: int = T5_MAX_TOKENS,
    ) -> CaptionResult:
        """Greedy Qwen2-VL answer to `instruction` about `image`, without the prompt.

        With a T5 tokenizer (argument or the one given at construction) the text is cut
        to `max_t5_tokens` by `fit_to_t5`.
        """
        text, generated, hit_limit = self._generate(image, instruction, max_new_tokens)
        result = CaptionResult(text=text, generated_tokens=generated, hit_token_limit=hit_limit)
        tokenizer = t5_tokenizer if t5_tokenizer is not None else self.t5_tokenizer
        if tokenizer is None:
            return result
        fit = fit_to_t5(text, tokenizer, max_t5_tokens)
        return CaptionResult(fit.text, fit.truncated, fit.tokens, generated, hit_limit)

    def caption_masked(
        self,
        image,
        mask_mode: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        t5_tokenizer=None,
        max_t5_tokens: int = T5_MAX_TOKENS,
    ) -> CaptionResult:
        """Caption of a masked reference: the visible part, then the placeholder sentence
        ("[Describe the new background here.]") the user must replace before generating.
        The T5 budget keeps room for the placeholder."""
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}.")
        placeholder = PLACEHOLDERS[mask_mode]
        text, generated, hit_limit = self._generate(image, MASKED_INSTRUCTIONS[mask_mode], max_new_tokens)
        text = _drop_sentences_about(text, _MASKED_REGION_WORDS[mask_mode])
        tokenizer = t5_tokenizer if t5_tokenizer is not None else self.t5_tokenizer
        if tokenizer is None:
            return CaptionResult(_join(text, placeholder), False, None, generated, hit_limit)
        # The placeholder's own count includes </s>, which the joined text has only once:
        # reserving it whole leaves one token of slack.
        budget = max_t5_tokens - t5_token_count(placeholder, tokenizer)
        if budget >= t5_token_count("", tokenizer):
            fit = fit_to_t5(text, tokenizer, budget)
        else:  # no room beside the placeholder: the placeholder is what must stay
            fit = T5Fit("", bool(text), 0)
        joined = _join(fit.text, placeholder)
        return CaptionResult(joined, fit.truncated, t5_token_count(joined, tokenizer), generated, hit_limit)

    def _generate(self, image, instruction: str, max_new_tokens: int) -> tuple[str, int, bool]:
        """(clean text, generated token count, stopped at max_new_tokens)."""
        import torch

        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("The instruction must be a non-empty string.")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
        image = _limit_pixels(to_rgb_image(image), self.max_pixels)
        # One user turn holding the image, then the instruction; the template adds the
        # default system turn and opens the assistant turn the model continues.
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=[image], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            # Greedy decoding: the same image always gets the same caption (the released
            # generation_config asks for sampling with temperature 0.01; this overrides it).
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        # generate returns prompt + answer; keep only the answer.
        new_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
        stop_ids = _as_set(self.model.generation_config.eos_token_id) | _as_set(
            self.model.generation_config.pad_token_id
        )
        while new_ids and new_ids[-1] in stop_ids:
            new_ids.pop()
        hit_limit = len(new_ids) >= max_new_tokens  # a final stop token means it finished
        text = self.processor.tokenizer.decode(new_ids, skip_special_tokens=True)
        return clean_caption(text), len(new_ids), hit_limit


def _as_set(value) -> set[int]:
    if value is None:
        return set()
    return set(value) if isinstance(value, (list, tuple, set)) else {int(value)}


def _join(text: str, placeholder: str) -> str:
    return f"{text} {placeholder}" if text else placeholder
