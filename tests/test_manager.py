import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dynamictrl.manager import (
    TEXT_ENCODER_PARAMS,
    TIERS,
    DynamiCtrlModels,
    ModelManager,
    OutOfMemory,
    PipelineOptions,
    apply_speed_options,
    choose_tier,
    clear_placement,
    estimate_vram_gb,
    next_tier,
    place_pipeline,
    video_tokens,
)


def test_video_tokens_of_the_official_size():
    # 37 frames -> 10 latents -> 5 temporal patches; 1360x768 -> 85 x 48 patches.
    assert video_tokens(37, 1360, 768) == 5 * 85 * 48 + 226
    assert video_tokens(9, 64, 64) == 2 * 4 * 4 + 226  # 3 latents padded to 4


def test_estimates_match_the_published_all_on_gpu_peaks():
    # Published (official code, all on one GPU): 24.7 / 28.4 / 34.8 GB.
    for (h, w), published in {(1024, 576): 24.7, (1360, 768): 28.4, (1360, 1360): 34.8}.items():
        assert abs(estimate_vram_gb("none", 37, h, w) - published) < 2.0
    frugal = [estimate_vram_gb(t, 37, 1360, 768) for t in TIERS]
    assert frugal == sorted(frugal, reverse=True)
    assert estimate_vram_gb("model", 37, 1360, 768, weight_bytes=1) < estimate_vram_gb("model", 37, 1360, 768)


@pytest.mark.parametrize(
    "free_gb,expected",
    [(80, "none"), (40, "none"), (24, "model"), (16, "group"), (12, "group"), (4, "sequential"), (1, "sequential")],
)
def test_tier_choice_from_free_vram(free_gb, expected):
    assert choose_tier(free_gb, 37, 1360, 768) == expected


def test_next_tier_walks_to_the_most_frugal():
    assert [next_tier(t) for t in TIERS] == ["model", "group", "sequential", None]


class Blob(torch.nn.Module):
    def __init__(self, megabytes):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(int(megabytes * 1e6 / 4)))


def test_lazy_loading_and_lru_eviction_under_a_ram_budget():
    manager = ModelManager(device="cpu", ram_budget_gb=0.025)
    loads = []
    for name in "abc":
        manager.register(name, lambda name=name: loads.append(name) or Blob(10))
    assert loads == [] and all(not row["loaded"] for row in manager.status())
    manager.get("a")
    manager.get("b")
    manager.get("a")  # a is now more recent than b
    manager.get("c")  # 30 MB > 25 MB: the least recently used (b) goes
    loaded = {row["name"] for row in manager.status() if row["loaded"]}
    assert loaded == {"a", "c"} and loads == ["a", "b", "c"]
    assert manager.loaded_bytes() <= 0.025e9


def test_a_model_in_use_is_never_evicted_or_unloaded():
    manager = ModelManager(device="cpu", ram_budget_gb=0.015)
    manager.register("a", lambda: Blob(10))
    manager.register("b", lambda: Blob(10))
    with manager.use("a"):
        manager.get("b")  # over budget, but a is in use
        assert manager.status()[0]["in_use"] and manager.status()[0]["loaded"]
        with pytest.raises(RuntimeError, match="in use"):
            manager.unload("a")
    manager.unload_all()
    assert manager.loaded_bytes() == 0


def test_memory_is_collected_only_when_a_model_is_let_go(monkeypatch):
    """A full garbage collection costs a big process ~0.3 s or more: a job that frees
    nothing (the variants not loaded, nothing on a GPU) must not pay for three."""
    collections = []
    monkeypatch.setattr("dynamictrl.manager.free_gpu_memory", lambda: collections.append(1))
    manager = ModelManager(device="cpu")
    manager.register("a", lambda: Blob(1))
    manager.register("b", lambda: Blob(1))
    manager.unload("a")
    manager.offload_all_except({"a"})
    with manager.use("a"):
        pass
    assert collections == []
    manager.unload("a")
    assert collections == [1]


def test_the_gpu_lock_serialises_two_jobs():
    manager = ModelManager(device="cpu")
    manager.register("m", lambda: Blob(1))
    inside, overlaps = [0], []

    def job():
        with manager.use("m"):
            inside[0] += 1
            overlaps.append(inside[0])
            time.sleep(0.05)
            inside[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1, 1]


def test_unknown_model_and_bad_options():
    with pytest.raises(KeyError, match="No model named"):
        ModelManager(device="cpu").get("sam")
    with pytest.raises(ValueError, match="offload must be one of"):
        PipelineOptions(offload="disk")


def test_injected_oom_is_retried_once_in_the_next_tier():
    manager = ModelManager(device="cpu")
    tried = []

    def job(tier):
        tried.append(tier)
        if len(tried) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return f"done in {tier}"

    assert manager.run_with_oom_retry(job, "model") == "done in group"
    assert tried == ["model", "group"]


def test_second_oom_names_what_to_lower():
    def job(tier):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(OutOfMemory, match="Lower the resolution"):
        ModelManager(device="cpu").run_with_oom_retry(job, "none", describe="generation")


@pytest.fixture(scope="module")
def models(tiny_weights):
    manager = ModelManager(device="cpu")
    return DynamiCtrlModels(manager, "gulucaptain/DynamiCtrl", weights_dir=tiny_weights)


def run(pipe, seed=0):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=image,
        pose_video=torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1,
        prompt="a person",
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).frames


def test_variant_swap_reuses_text_encoder_and_vae(models):
    base = models.pipeline(None)
    masked = models.pipeline("mask_background")
    assert masked.text_encoder is base.text_encoder and masked.vae is base.vae
    assert masked.transformer is not base.transformer
    loaded = {row["name"] for row in models.manager.status() if row["loaded"]}
    assert "dynamictrl.transformer.base" not in loaded  # one transformer at a time
    again = models.pipeline("mask_background")
    assert again.transformer is masked.transformer


def test_pipeline_use_on_cpu_runs_in_tier_none(models):
    options = PipelineOptions()
    assert models.tier_for(options, 9, 32, 32) == "none"
    with models.use(None, options, "none") as pipe:
        frames = run(pipe)
    assert frames.shape == (1, 9, 32, 32, 3)


@pytest.mark.slow  # pipeline runs in each memory/speed mode
def test_group_offload_tier_gives_the_same_video(models):
    pipe = models.pipeline(None)
    expected = run(pipe)
    place_pipeline(pipe, "group", "cpu")  # on the CPU every tier is plain placement
    np.testing.assert_array_equal(run(pipe), expected)


@pytest.mark.slow  # pipeline runs in each memory/speed mode
def test_first_block_cache_at_threshold_zero_matches_no_cache(models):
    pipe = models.pipeline(None)
    expected = run(pipe)
    apply_speed_options(pipe, PipelineOptions(first_block_cache=1e-9))
    assert pipe.transformer.is_cache_enabled
    np.testing.assert_array_equal(run(pipe), expected)
    np.testing.assert_array_equal(run(pipe), expected)  # cache state is reset between jobs
    apply_speed_options(pipe, PipelineOptions())
    assert not pipe.transformer.is_cache_enabled


@pytest.mark.slow  # pipeline runs in each memory/speed mode
def test_pyramid_attention_broadcast_hooks_fit_the_model(models):
    from diffusers import PyramidAttentionBroadcastConfig

    pipe = models.pipeline(None)
    expected = run(pipe)
    # Skip range 1 recomputes every block: the hooks run but may change nothing.
    pipe.transformer.enable_cache(
        PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=1,
            spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=lambda: pipe.current_timestep,
        )
    )
    np.testing.assert_array_equal(run(pipe), expected)
    apply_speed_options(pipe, PipelineOptions(pyramid_attention_broadcast=True))  # the product setting
    first, second = run(pipe), run(pipe)
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()
    apply_speed_options(pipe, PipelineOptions())


@pytest.mark.slow  # several pipeline runs
def test_first_block_cache_changes_results_when_it_skips(models):
    pipe = models.pipeline(None)
    expected = run(pipe)
    apply_speed_options(pipe, PipelineOptions(first_block_cache=0.9))
    try:
        assert np.abs(run(pipe) - expected).max() > 0
    finally:
        apply_speed_options(pipe, PipelineOptions())


@pytest.mark.slow  # pipeline runs in each memory/speed mode
def test_fp8_storage_runs_and_can_be_switched_off_again(models):
    pipe = models.pipeline(None)
    expected = run(pipe)
    fp8 = models.pipeline(None, PipelineOptions(fp8=True))
    assert any(p.dtype == torch.float8_e4m3fn for p in fp8.transformer.parameters())
    frames = run(fp8)  # fp32 model, float8 storage: compute stays fp32
    assert np.isfinite(frames).all() and np.abs(frames - expected).max() > 0
    plain = models.pipeline(None, PipelineOptions(fp8=False))
    assert not any(p.dtype == torch.float8_e4m3fn for p in plain.transformer.parameters())
    np.testing.assert_array_equal(run(plain), expected)


@pytest.mark.slow  # pipeline runs in each memory/speed mode
def test_fused_qkv_gives_the_same_video(models):
    expected = run(models.pipeline(None))
    fused = models.pipeline(None, PipelineOptions(fuse_qkv=True))
    np.testing.assert_allclose(run(fused), expected, atol=1e-5)
    assert fused.transformer._dynamictrl_fused


@pytest.mark.slow  # pipeline runs in each memory/speed mode
def test_int8_weight_only_runs_close_to_full_precision_and_can_be_undone(models):
    expected = run(models.pipeline(None))
    quantised = models.pipeline(None, PipelineOptions(int8=True))
    assert type(quantised.transformer.transformer_blocks[0].attn1.to_q.weight).__name__ == "Int8Tensor"
    frames = run(quantised)
    assert np.isfinite(frames).all() and np.abs(frames - expected).mean() < 0.05
    plain = models.pipeline(None, PipelineOptions())
    assert isinstance(plain.transformer.transformer_blocks[0].attn1.to_q.weight, torch.nn.Parameter)
    np.testing.assert_array_equal(run(plain), expected)
    with pytest.raises(ValueError, match="either fp8 or int8"):
        PipelineOptions(fp8=True, int8=True)


def test_t5_on_cpu_lowers_the_model_tier_estimate_with_fp8():
    # With fp8 weights at a small size the 9.5 GB text encoder is the largest model on the GPU.
    with_t5 = estimate_vram_gb("model", 9, 256, 256, weight_bytes=1)
    without = estimate_vram_gb("model", 9, 256, 256, weight_bytes=1, t5_on_cpu=True)
    assert with_t5 == pytest.approx(TEXT_ENCODER_PARAMS * 2 / 1e9) and without < with_t5 - 3
    assert choose_tier(9.0, 9, 256, 256, weight_bytes=1) == "group"
    assert choose_tier(9.0, 9, 256, 256, weight_bytes=1, t5_on_cpu=True) == "none"  # all but T5 fit


def test_t5_on_cpu_placement_keeps_the_text_encoder_off_the_job_device(tiny_weights):
    from dynamictrl import weights
    from dynamictrl.pipeline import DynamiCtrlPipeline

    pipe = DynamiCtrlPipeline.from_pretrained(weights.BASE_REPO, weights_dir=tiny_weights)
    # "meta" stands in for a GPU here: every tier but the CPU moves weights off the host.
    place_pipeline(pipe, "none", "meta", t5_on_cpu=True)
    assert pipe.transformer.device.type == "meta" and pipe.vae.device.type == "meta"
    assert pipe.text_encoder.device.type == "cpu" and pipe.components["text_encoder"] is pipe.text_encoder
    assert pipe._execution_device == torch.device("meta") and pipe.text_encoder_device == "cpu"
    embeds = pipe._get_t5_prompt_embeds("a dancer")  # encoded on the CPU, handed over to the job device
    assert embeds.device.type == "meta" and embeds.shape[1] == 226
    clear_placement(pipe)
    assert pipe.execution_device is None and pipe.text_encoder_device is None


def test_t5_stays_with_the_pipeline_on_the_cpu(models):
    pipe = models.pipeline(None)
    place_pipeline(pipe, "model", "cpu", t5_on_cpu=True)
    assert pipe.text_encoder_device is None and pipe._execution_device.type == "cpu"
