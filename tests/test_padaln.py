import torch

from dynamictrl.models.padaln import PoseAdaptiveLayerNorm


def test_padaln_is_eq3_with_gate_of_eq4():
    torch.manual_seed(0)
    padaln = PoseAdaptiveLayerNorm(conditioning_dim=6, embedding_dim=8)
    torch.nn.init.normal_(padaln.norm.weight)
    torch.nn.init.normal_(padaln.norm.bias)
    pose = torch.randn(2, 5, 8)
    temb = torch.randn(2, 6)

    modulated, gate = padaln(pose, temb)

    shift, scale, delta = torch.nn.functional.linear(
        torch.nn.functional.silu(temb), padaln.linear.weight, padaln.linear.bias
    ).split(8, dim=1)
    normed = torch.nn.functional.layer_norm(pose, (8,), padaln.norm.weight, padaln.norm.bias, eps=1e-5)
    torch.testing.assert_close(modulated, normed * (1 + scale[:, None]) + shift[:, None])
    torch.testing.assert_close(gate, delta[:, None])
    assert gate.shape == (2, 1, 8)


def test_padaln_layers_have_released_shapes_and_default_init():
    padaln = PoseAdaptiveLayerNorm(512, 3072)
    assert padaln.linear.weight.shape == (9216, 512)
    assert padaln.norm.weight.shape == (3072,)
    assert padaln.norm.eps == 1e-5
    # PyTorch default init (the official training starts from it), not zero.
    assert padaln.linear.weight.abs().sum() > 0
