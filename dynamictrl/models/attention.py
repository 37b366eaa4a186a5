"""CogVideoX's joint attention (text ++ video, QK norms, RoPE on the video part) computed
through diffusers' attention dispatcher, so the kernel is selectable and the sequence can
be split across processes.

`DynamiCtrlAttnProcessor` does what diffusers' `CogVideoXAttnProcessor2_0` does, except
that the attention itself goes through `dispatch_attention_fn`. With the `native` kernel the
query/key/value reach `F.scaled_dot_product_attention` with the same memory layout as
in the parent processor, so the numbers are bit-identical.

With context parallelism (`dynamictrl/parallel.py`) each process holds the 226 text
tokens in full and a slice of the video tokens; `sequence_parallel.attention` exchanges
the video query/key/value between processes around the one kernel call.
"""

import torch
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _check_attention_backend_requirements,
    dispatch_attention_fn,
)
from diffusers.models.embeddings import apply_rotary_emb

# User-facing kernel names (`--attention`) -> diffusers' backend names.
ATTENTION_KERNELS = {
    "native": AttentionBackendName.NATIVE,  # torch SDPA: picks flash/efficient/math itself
    "flash": AttentionBackendName.FLASH,  # flash-attn 2
    "flash3": AttentionBackendName._FLASH_3,  # flash-attn 3 (Hopper)
    "sage": AttentionBackendName.SAGE,  # SageAttention (int8 QK)
    "xformers": AttentionBackendName.XFORMERS,
    "flex": AttentionBackendName.FLEX,  # torch flex_attention
    "cudnn": AttentionBackendName._NATIVE_CUDNN,  # torch SDPA forced to cuDNN
    "efficient": AttentionBackendName._NATIVE_EFFICIENT,  # torch SDPA forced to mem-efficient
    "math": AttentionBackendName._NATIVE_MATH,  # torch SDPA forced to the reference math kernel
}
# Kernels that run on the CPU too; every other one needs a CUDA GPU.
CPU_KERNELS = ("native", "math", "flex")
# Which package provides a kernel (for the error when it is missing).
KERNEL_PACKAGES = {
    "flash": "flash-attn (pip install flash-attn --no-build-isolation)",
    "flash3": "flash-attn 3 (build the hopper/ folder of Dao-AILab/flash-attention from source)",
    "sage": "sageattention (pip install sageattention)",
    "xformers": "xformers (pip install xformers)",
}


def resolve_attention_kernel(name: str, device: str | torch.device | None = None) -> AttentionBackendName:
    """The diffusers backend for a kernel name; a clear error if it is unknown, needs a GPU
    that is not there, or its package is not installed."""
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"Unknown attention kernel {name!r}; choose one of {', '.join(ATTENTION_KERNELS)}.")
    if device is not None and torch.device(device).type != "cuda" and name not in CPU_KERNELS:
        raise ValueError(
            f"The {name!r} attention kernel needs a CUDA GPU (device is {device}); "
            f"on the CPU use one of {', '.join(CPU_KERNELS)}."
        )
    backend = ATTENTION_KERNELS[name]
    try:
        _check_attention_backend_requirements(backend)
    except RuntimeError as error:
        package = KERNEL_PACKAGES.get(name)
        hint = f"install {package}" if package else str(error)
        raise ValueError(f"The {name!r} attention kernel is not available: {hint}.") from error
    return backend


class DynamiCtrlAttnProcessor:
    """Joint text+video attention of a CogVideoX block through `dispatch_attention_fn`.

    `_attention_backend` and `_parallel_config` are the attributes diffusers'
    `ModelMixin.set_attention_backend` / `enable_parallelism` look for; our context
    parallelism is `sequence_parallel` (see `dynamictrl.parallel.SequenceParallel`),
    because CogVideoX's text tokens are replicated rather than split (see docs/parallel.md).
    """

    def __init__(self, backend: AttentionBackendName | None = None):
        self._attention_backend = backend  # None: diffusers' active backend (native unless changed)
        self._parallel_config = None
        self.sequence_parallel = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError("DynamiCtrl's joint attention takes no attention mask (CogVideoX attends to all tokens).")
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.shape[0]

        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads

        # (B, H, S, D), as the parent processor: the norms and RoPE see the same tensors.
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        # The dispatcher takes (B, S, H, D); these are views, and the native kernel permutes
        # them back, so SDPA receives exactly the tensors the parent processor gives it.
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))
        if self.sequence_parallel is None:
            hidden_states = self._attend(query, key, value)
        else:
            hidden_states = self.sequence_parallel.attention(query, key, value, text_seq_length, self._attend)
        hidden_states = hidden_states.reshape(batch_size, -1, attn.heads * head_dim)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return dispatch_attention_fn(query, key, value, backend=self._attention_backend)
