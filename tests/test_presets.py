import pytest

from dynamictrl import presets
from dynamictrl.settings import GenerateSettings
from dynamictrl.validation import check_frames, check_size


def test_every_size_preset_is_valid_for_the_released_model():
    sizes = {(p.width, p.height) for p in presets.SIZE_PRESETS}
    assert sizes == {(576, 1024), (1024, 576), (768, 1360), (1360, 768), (1024, 1024)}
    for preset in presets.SIZE_PRESETS:
        assert presets.fits_positional_grid(preset.width, preset.height), preset
        check_size(preset.width, preset.height)
        check_frames(37)
        assert presets.size_name(preset.width, preset.height) == preset.name
    assert not presets.fits_positional_grid(2416, 1024) and not presets.fits_positional_grid(770, 1360)
    assert presets.size_name(640, 640) == presets.CUSTOM


def test_speed_presets_and_custom():
    defaults = GenerateSettings(prompt="")
    assert presets.speed_name(defaults.steps, defaults.memory.first_block_cache) == "quality"
    draft = presets.speed_preset("draft")
    assert draft.steps < defaults.steps and draft.first_block_cache > 0
    assert presets.speed_name(draft.steps, draft.first_block_cache) == "draft"
    assert presets.speed_name(12, draft.first_block_cache) == presets.CUSTOM
    with pytest.raises(ValueError, match="Unknown speed 'fast'"):
        presets.speed_preset("fast")


def test_time_estimates_order_and_scale():
    quality = presets.estimate_gpu_seconds(768, 1360, 37, 25)
    draft = presets.estimate_gpu_seconds(576, 1024, 37, 10, first_block_cache=0.05)
    # Calibration point: 81 frames 1360x768, 50 steps, CFG ~ 550 s denoising (+ decoding).
    assert 550 < presets.estimate_gpu_seconds(1360, 768, 81, 50) < 600
    assert draft < quality / 4
    assert presets.time_label(draft).endswith("s on a GPU") and presets.time_label(600) == "~10 min on a GPU"
    assert presets.video_tokens(768, 1360, 37) == 5 * 85 * 48
