import json

import pytest
import torch
from safetensors.torch import load_file

from dynamictrl.models import DynamiCtrlTransformerModel
from tests.conftest import official_fixture


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def test_state_dict_equals_released_5b_checkpoint_on_meta():
    reference = json.loads(official_fixture("dynamictrl_transformer_keys.json").read_text())
    with torch.device("meta"):
        model = DynamiCtrlTransformerModel.from_config(reference["config"])
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert set(shapes) == set(reference["keys"])
    assert shapes == reference["keys"]
    assert sum(p.numel() for p in model.parameters()) == reference["total_params"]
    assert model.config.num_layers == 42 and len(model.transformer_blocks) == 42


def test_released_folder_loads_through_from_pretrained():
    folder = official_fixture("official_pipeline_tiny", "model", "transformer")
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "DynamiCtrlTransformerModel"
    model = DynamiCtrlTransformerModel.from_pretrained(folder)
    assert len(model.transformer_blocks) == model.config.num_layers == 2
    assert model.transformer_blocks[0].control_norm1.linear.weight.abs().sum() > 0


@pytest.fixture(scope="module")
def official_tiny():
    config = json.loads(official_fixture("official_tiny", "config.json").read_text())
    model = DynamiCtrlTransformerModel.from_config(config).eval()
    missing, unexpected = model.load_state_dict(
        load_file(official_fixture("official_tiny", "weights.safetensors")), strict=True
    )
    assert not missing and not unexpected
    return model, load_file(official_fixture("official_tiny", "case_a.safetensors"))


def run_case(model, case):
    return model(
        hidden_states=case["in.hidden_states"],
        encoder_hidden_states=case["in.encoder_hidden_states"],
        timestep=case["in.timestep"],
        pose_latents=case["in.pose_latents"],
        ofs=case["in.ofs"],
        image_rotary_emb=(case["in.rope_cos"], case["in.rope_sin"]),
    ).sample


def test_reproduces_official_output_and_every_block(official_tiny):
    model, case = official_tiny
    block_outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: block_outputs.append(o)) for b in model.transformer_blocks]
    try:
        with torch.no_grad():
            sample = run_case(model, case)
    finally:
        for hook in hooks:
            hook.remove()
    assert rel_l2(sample, case["out.sample"]) < 1e-5
    assert len(block_outputs) == model.config.num_layers
    for i, outputs in enumerate(block_outputs):
        for j in range(3):  # video tokens, text tokens, pose stream
            assert rel_l2(outputs[j], case[f"blk.{i}.{j}"]) < 1e-5, (i, j)


def test_pose_changes_the_output(official_tiny):
    model, case = official_tiny
    other = dict(case)
    other["in.pose_latents"] = torch.zeros_like(case["in.pose_latents"])
    with torch.no_grad():
        assert rel_l2(run_case(model, other), case["out.sample"]) > 1e-3


def test_gradient_checkpointing_gives_same_gradients(official_tiny):
    model, case = official_tiny

    def grads():
        model.zero_grad()
        run_case(model, case).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.enable_gradient_checkpointing()
    try:
        assert model.gradient_checkpointing
        checkpointed = grads()
    finally:
        model.disable_gradient_checkpointing()
        model.zero_grad()
    assert plain.keys() == checkpointed.keys()
    assert any("control_norm1" in name for name in plain)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-5, atol=1e-6)


def test_missing_or_misshaped_pose_is_a_clear_error(official_tiny):
    model, case = official_tiny
    with pytest.raises(ValueError, match="pose_latents"):
        model(case["in.hidden_states"], case["in.encoder_hidden_states"], case["in.timestep"], None, ofs=case["in.ofs"])
    with pytest.raises(ValueError, match="frames and size"):
        model(
            case["in.hidden_states"],
            case["in.encoder_hidden_states"],
            case["in.timestep"],
            case["in.pose_latents"][:, :1],
            ofs=case["in.ofs"],
        )


def test_pose_strength_one_is_the_trained_model_bit_for_bit(official_tiny, monkeypatch):
    from dynamictrl.models import transformer as transformer_module

    model, case = official_tiny
    with torch.no_grad():
        default = run_case(model, case)
        one = model(
            hidden_states=case["in.hidden_states"],
            encoder_hidden_states=case["in.encoder_hidden_states"],
            timestep=case["in.timestep"],
            pose_latents=case["in.pose_latents"],
            ofs=case["in.ofs"],
            image_rotary_emb=(case["in.rope_cos"], case["in.rope_sin"]),
            pose_strength=1.0,
        ).sample
        # The official injection, written out: norm1(video) + n.
        monkeypatch.setattr(transformer_module, "pose_injection", lambda hidden, pose, strength: hidden + pose)
        official = run_case(model, case)
    assert torch.equal(one, default) and torch.equal(one, official)
    assert rel_l2(one, case["out.sample"]) < 1e-5


def run_with_strength(model, case, pose_latents, strength):
    with torch.no_grad():
        return model(
            hidden_states=case["in.hidden_states"],
            encoder_hidden_states=case["in.encoder_hidden_states"],
            timestep=case["in.timestep"],
            pose_latents=pose_latents,
            ofs=case["in.ofs"],
            image_rotary_emb=(case["in.rope_cos"], case["in.rope_sin"]),
            pose_strength=strength,
        ).sample


def test_pose_strength_zero_removes_the_pose_from_the_video_stream(official_tiny):
    model, case = official_tiny
    pose = case["in.pose_latents"]
    other = torch.randn_like(pose)
    zero_a = run_with_strength(model, case, pose, 0.0)
    zero_b = run_with_strength(model, case, other, 0.0)
    assert torch.equal(zero_a, zero_b)  # the output no longer depends on the pose at all
    full = run_with_strength(model, case, pose, 1.0)
    half = run_with_strength(model, case, pose, 0.5)
    assert rel_l2(zero_a, full) > 1e-3
    # 0.5 lies between: closer to each end than the ends are to each other.
    assert rel_l2(half, full) < rel_l2(zero_a, full) and rel_l2(half, zero_a) < rel_l2(zero_a, full)
