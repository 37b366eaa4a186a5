"""Training on CPU with the tiny DynamiCtrl checkpoint and a tiny synthetic data folder:
the loss goes down, checkpoints save and resume exactly, the trained transformer loads
in the pipeline, LoRA saves only adapters and they load back."""

import json

import numpy as np
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file

from dynamictrl import weights
from dynamictrl.models import DynamiCtrlTransformerModel
from dynamictrl.pipeline import DynamiCtrlPipeline, latent_layout, load_transformer
from dynamictrl.testing.models import TRANSFORMER_CONFIG
from dynamictrl.train.config import config_from_dict
from dynamictrl.train.latents import (
    encode_image_latents,
    encode_posterior,
    sample_video_latents,
)
from dynamictrl.train.lora import load_lora
from dynamictrl.train.losses import add_noise, v_prediction_loss
from dynamictrl.train.trainer import (
    find_checkpoint,
    load_trainable_transformer,
    read_state,
    train,
)
from tests.test_train_data import make_dataset

pytestmark = pytest.mark.slow  # training steps and checkpoints on the tiny model

FRAMES = 9  # 3 latent frames: odd, so the front padding of patch_size_t = 2 is exercised


def base_dir(tiny_weights):
    return tiny_weights / "DynamiCtrl"


def make_config(tiny_weights, data_dir, output_dir, train_overrides=None, **sections):
    raw = {
        "model": {"pretrained": str(base_dir(tiny_weights)), "local_files_only": True},
        "data": {"data_dir": str(data_dir), "num_frames": FRAMES, "num_workers": 0},
        "train": {
            "output_dir": str(output_dir),
            "max_steps": 30,
            # The tiny model overfits one clip at a learning rate far above the recipe's.
            "learning_rate": 3e-3,
            "lr_warmup_steps": 0,
            "mixed_precision": "no",
            "checkpointing_steps": 10,
            "log_every": 10,
            **(train_overrides or {}),
        },
        "validation": {"every_steps": 0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="module")
def sft_run(tiny_weights, train_data, tmp_path_factory):
    config = make_config(
        tiny_weights,
        train_data,
        tmp_path_factory.mktemp("sft"),
        validation={"every_steps": 15, "num_inference_steps": 2},
    )
    return config, train(config)


def model_inputs(seed=0, frames=2):
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, frames, 8, 4, 4, generator=g),
        "encoder_hidden_states": torch.randn(1, 226, 32, generator=g),
        "timestep": torch.tensor([500]),
        "pose_latents": torch.randn(1, frames, 4, 4, 4, generator=g),
        "ofs": torch.tensor([2.0]),
        "return_dict": False,
    }


def test_training_latents_are_the_pipeline_latents(tiny_pipe):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    pose = torch.rand(1, FRAMES, 3, 32, 32, generator=g) * 2 - 1
    layout = latent_layout(FRAMES, 4, 2)
    assert layout.padding == 1
    expected_image, expected_pose = tiny_pipe.encode_condition_latents(
        image, pose, layout, torch.Generator().manual_seed(7), torch.float32
    )
    vae = tiny_pipe.vae
    g = torch.Generator().manual_seed(7)
    image_latents = encode_image_latents(vae, image, layout, g, 1.0, torch.float32)
    posterior = encode_posterior(vae, pose)
    pose_latents = sample_video_latents(posterior, vae.config.scaling_factor, layout, g, torch.float32)
    torch.testing.assert_close(image_latents, expected_image, rtol=0, atol=0)
    torch.testing.assert_close(pose_latents, expected_pose, rtol=0, atol=0)
    # The official training's x0.7 is the only difference of `image_latent_scale: 0.7`.
    official = encode_image_latents(vae, image, layout, torch.Generator().manual_seed(7), 0.7, torch.float32)
    torch.testing.assert_close(official, 0.7 * expected_image)


def test_loss_is_the_weighted_x0_error_and_equals_v_mse(tiny_pipe):
    scheduler = tiny_pipe.scheduler
    g = torch.Generator().manual_seed(0)
    x0, noise, v_hat = (torch.randn(3, 2, 4, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 500, 999])
    noisy = add_noise(scheduler, x0, noise, t)
    torch.testing.assert_close(noisy, scheduler.add_noise(x0, noise, t))
    loss = v_prediction_loss(scheduler, v_hat, noisy, x0, t)
    v = scheduler.get_velocity(x0, noise, t)
    torch.testing.assert_close(loss, ((v_hat - v) ** 2).flatten(1).mean(1), rtol=1e-4, atol=1e-5)


def test_sft_loss_decreases_and_logs(sft_run):
    config, result = sft_run
    losses = np.array(result.losses)
    assert result.global_step == 30 and len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.85 * losses[:5].mean(), losses
    log = [json.loads(line) for line in (config.output_dir / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 31))
    assert (config.output_dir / "train_config.yaml").is_file()


def test_sft_checkpoints_and_validation_samples(sft_run):
    config, result = sft_run
    assert [p.name for p in result.checkpoints] == ["checkpoint-10", "checkpoint-20"]
    for path in result.checkpoints:
        assert read_state(path)["global_step"] == int(path.name.split("-")[1])
        assert (path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
        assert not (path / "model.safetensors").exists()  # the transformer is saved once
    assert find_checkpoint(config.output_dir, "latest") == result.checkpoints[-1]
    assert [p.parent.name for p in result.validation_videos] == ["step-000015", "step-000030"]
    assert all(p.stat().st_size > 0 for p in result.validation_videos)


def test_trained_transformer_reloads_and_runs_in_the_pipeline(sft_run, tiny_weights, tiny_pipe):
    config, result = sft_run
    assert result.weights_path == config.output_dir / "transformer"
    trained = DynamiCtrlTransformerModel.from_pretrained(result.weights_path)
    initial = load_transformer(base_dir(tiny_weights))
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial.state_dict()[k])]
    assert any(".control_norm1." in k for k in changed) and any(".attn1." in k for k in changed)

    pipe = DynamiCtrlPipeline(
        tokenizer=tiny_pipe.tokenizer,
        text_encoder=tiny_pipe.text_encoder,
        vae=tiny_pipe.vae,
        transformer=trained,
        scheduler=tiny_pipe.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        image=torch.zeros(1, 3, 32, 32),
        pose_video=torch.zeros(FRAMES, 3, 32, 32),
        prompt="a person dancing in a park",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert frames.shape == (1, FRAMES, 32, 32, 3) and np.isfinite(frames).all()


def test_resume_continues_exactly(sft_run, tiny_weights, train_data, tmp_path):
    config, result = sft_run
    resumed = make_config(
        tiny_weights,
        train_data,
        tmp_path / "resumed",
        {"resume_from_checkpoint": str(result.checkpoints[-1])},
        data={"cache_dir": str(config.cache_dir)},
    )
    again = train(resumed)
    assert again.global_step == 30 and len(again.losses) == 10
    np.testing.assert_allclose(again.losses, result.losses[20:], rtol=1e-5)
    first = load_file(str(result.weights_path / "diffusion_pytorch_model.safetensors"))
    second = load_file(str(again.weights_path / "diffusion_pytorch_model.safetensors"))
    assert max(float((first[k] - second[k]).abs().max()) for k in first) < 1e-5


def test_latent_cache_changes_nothing_but_speed(tiny_weights, tmp_path):
    """Cached posteriors vs encoding every step: the same losses, with masks, both
    dropouts, a batch of 2 and gradient accumulation."""
    data = make_dataset(tmp_path / "data", items=(("a", 9), ("b", 13)), masks=("b",))
    results = []
    for cache in (True, False):
        config = make_config(
            tiny_weights,
            data,
            tmp_path / f"cache-{cache}",
            {
                "max_steps": 2,
                "batch_size": 2,
                "gradient_accumulation_steps": 2,
                "checkpointing_steps": 0,
                "image_dropout": 0.5,
                "gradient_checkpointing": False,
            },
            data={"cache_latents": cache, "use_masks": True, "prompt_dropout": 0.5},
        )
        results.append(train(config))
        assert (config.cache_dir.is_dir() and any(config.cache_dir.glob("latents-*"))) == cache
    assert len(results[0].losses) == 2
    np.testing.assert_allclose(results[0].losses, results[1].losses, rtol=1e-5)


def test_lora_saves_only_adapters_that_load_back(tiny_weights, tiny_pipe, train_data, tmp_path):
    config = make_config(
        tiny_weights,
        train_data,
        tmp_path / "lora",
        {"max_steps": 10, "learning_rate": 1e-2, "checkpointing_steps": 5},
        lora={"enabled": True, "rank": 4, "alpha": 8},
    )
    result = train(config)
    path = result.weights_path / "pytorch_lora_weights.safetensors"
    assert result.weights_path == config.output_dir / "lora" and path.is_file()
    state = load_file(str(path))
    # 2 blocks x (q, k, v, out, PadaLN linear) x (A, B), nothing else.
    assert len(state) == 2 * 5 * 2
    assert all(k.startswith("transformer.transformer_blocks.") and (".lora_A." in k or ".lora_B." in k) for k in state)
    assert sum(".control_norm1.linear.lora_" in k for k in state) == 4
    base_file = base_dir(tiny_weights) / "transformer" / "diffusion_pytorch_model.safetensors"
    assert path.stat().st_size < base_file.stat().st_size / 4
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() is not None and "lora_alpha" in json.dumps(handle.metadata())
    checkpoint = result.checkpoints[0]
    assert (checkpoint / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not (checkpoint / "transformer").exists() and not (checkpoint / "model.safetensors").exists()

    fresh = load_transformer(base_dir(tiny_weights))
    with torch.no_grad():
        before = fresh(**model_inputs())[0]
        load_lora(fresh, result.weights_path, adapter_name="trained")
        after = fresh(**model_inputs())[0]
    assert fresh.peft_config["trained"].lora_alpha == 8 and fresh.peft_config["trained"].r == 4
    assert float((after - before).abs().max()) > 1e-4
    loaded = {k: v for k, v in fresh.state_dict().items() if ".lora_B." in k}
    assert any(float(v.abs().max()) > 0 for v in loaded.values())  # lora_B started at zero

    # The pipeline's own LoRA loader reads the same file.
    pipe = DynamiCtrlPipeline(
        tokenizer=tiny_pipe.tokenizer,
        text_encoder=tiny_pipe.text_encoder,
        vae=tiny_pipe.vae,
        transformer=load_transformer(base_dir(tiny_weights)),
        scheduler=tiny_pipe.scheduler,
    )
    pipe.load_lora_weights(str(result.weights_path))
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**model_inputs())[0], after)


def test_cogvideox_transformer_gets_fresh_padaln(tiny_weights, train_data, tmp_path):
    torch.manual_seed(5)
    cogvideox = CogVideoXTransformer3DModel(**TRANSFORMER_CONFIG)
    cogvideox.save_pretrained(tmp_path / "cogvideox" / "transformer")
    config = make_config(tiny_weights, train_data, tmp_path / "out", model={"transformer": str(tmp_path / "cogvideox")})
    model = load_trainable_transformer(config, weights.resolve(config.model.pretrained), torch.float32)
    reference = cogvideox.state_dict()
    for key, value in model.state_dict().items():
        if ".control_norm1." in key:
            assert torch.isfinite(value).all()
            if key.endswith("norm.weight"):
                assert torch.equal(value, torch.ones_like(value))
            if key.endswith("linear.weight"):  # nn.Linear default init: U(-1/sqrt(in), 1/sqrt(in))
                assert float(value.abs().max()) <= 1 / TRANSFORMER_CONFIG["time_embed_dim"] ** 0.5
        else:
            assert torch.equal(value, reference[key]), key
