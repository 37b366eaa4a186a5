"""The DynamiCtrl transformer: CogVideoX-1.5 with a PadaLN pose stream in every block.

Compared with diffusers' `CogVideoXTransformer3DModel` there is exactly one addition
per block (`control_norm1`, see `padaln.py`) and one extra input, the pose latents.
Everything else (patch embedding, attention, feed-forward, output head, unpatchify)
is the parent class's, so the released checkpoints load with their own key names.
"""

from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock, CogVideoXTransformer3DModel
from diffusers.utils import apply_lora_scale
from torch import nn

from .attention import DynamiCtrlAttnProcessor, resolve_attention_kernel
from .padaln import PoseAdaptiveLayerNorm


def pose_injection(norm_hidden_states: torch.Tensor, norm_pose: torch.Tensor, pose_strength: float) -> torch.Tensor:
    """The one place the pose reaches the video: PadaLN's modulated pose tokens `n` added
    to the video tokens' norm1 output before self-attention (paper Eq. 3; docs/reference.md,
    "The transformer", step 4).

    `pose_strength` is our extension, not in the paper or the official code: it scales `n`.
    1.0 is the trained model, bit for bit (the addition is the official one, unscaled);
    0 removes the pose from the video stream in every block, so the output no longer
    depends on the pose video; values in between (or up to 2) loosen or tighten how
    closely the motion is followed.
    """
    if pose_strength == 1.0:
        return norm_hidden_states + norm_pose
    if pose_strength == 0.0:
        return norm_hidden_states
    return norm_hidden_states + pose_strength * norm_pose


class DynamiCtrlBlock(CogVideoXBlock):
    """A CogVideoX block whose self-attention input also receives the pose tokens."""

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        time_embed_dim: int,
        dropout: float = 0.0,
        activation_fn: str = "gelu-approximate",
        attention_bias: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__(
            dim=dim,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            time_embed_dim=time_embed_dim,
            dropout=dropout,
            activation_fn=activation_fn,
            attention_bias=attention_bias,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
        )
        self.control_norm1 = PoseAdaptiveLayerNorm(time_embed_dim, dim, norm_elementwise_affine, norm_eps)
        # The same attention as the parent's processor, through diffusers' dispatcher.
        self.attn1.set_processor(DynamiCtrlAttnProcessor())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        pose_tokens: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        pose_strength: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (video tokens, text tokens, pose tokens for the next block).

        `pose_strength` scales the pose injection, the `+ n` on the video tokens' attention
        input (see `pose_injection`); the pose stream itself is unchanged."""
        text_seq_length = encoder_hidden_states.size(1)
        attention_kwargs = attention_kwargs or {}

        norm_hidden_states, norm_encoder_hidden_states, gate_msa, enc_gate_msa = self.norm1(
            hidden_states, encoder_hidden_states, temb
        )
        norm_pose, pose_gate = self.control_norm1(pose_tokens, temb)
        norm_hidden_states = pose_injection(norm_hidden_states, norm_pose, pose_strength)

        attn_hidden_states, attn_encoder_hidden_states = self.attn1(
            hidden_states=norm_hidden_states,
            encoder_hidden_states=norm_encoder_hidden_states,
            image_rotary_emb=image_rotary_emb,
            **attention_kwargs,
        )
        hidden_states = hidden_states + gate_msa * attn_hidden_states
        encoder_hidden_states = encoder_hidden_states + enc_gate_msa * attn_encoder_hidden_states

        # Eq. 4 of the paper. The official code flags this line as doubtful, but the released
        # weights were trained with it, so it stays exactly so.
        next_pose_tokens = norm_pose + pose_gate * norm_pose

        norm_hidden_states, norm_encoder_hidden_states, gate_ff, enc_gate_ff = self.norm2(
            hidden_states, encoder_hidden_states, temb
        )
        ff_output = self.ff(torch.cat([norm_encoder_hidden_states, norm_hidden_states], dim=1))
        hidden_states = hidden_states + gate_ff * ff_output[:, text_seq_length:]
        encoder_hidden_states = encoder_hidden_states + enc_gate_ff * ff_output[:, :text_seq_length]

        return hidden_states, encoder_hidden_states, next_pose_tokens


class DynamiCtrlTransformerModel(CogVideoXTransformer3DModel):
    """CogVideoX-1.5 I2V transformer with Pose-adaptive LayerNorm in every block.

    Inputs of `forward`: `hidden_states` (B, F, 2C, H, W) = noise latents ++ image latents
    on channels, `pose_latents` (B, F, C, H, W) = VAE latents of the pose video (already
    multiplied by the VAE scaling factor), text embeddings, timestep, ofs and RoPE.
    """

    _no_split_modules = ["DynamiCtrlBlock", "CogVideoXPatchEmbed"]
    # Set by `dynamictrl.parallel.apply_parallel`: splits the batch (CFG) and the video
    # sequence (context parallelism) across processes; None runs everything here.
    _dynamictrl_parallel = None

    # The signature mirrors the parent's so that the released `config.json` loads as is.
    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 16,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: int | None = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: int | None = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
    ):
        # The parent is built without blocks (so 5B of CogVideoX blocks are never
        # allocated only to be thrown away); ours are built below.
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            time_embed_dim=time_embed_dim,
            ofs_embed_dim=ofs_embed_dim,
            text_embed_dim=text_embed_dim,
            num_layers=0,
            dropout=dropout,
            attention_bias=attention_bias,
            sample_width=sample_width,
            sample_height=sample_height,
            sample_frames=sample_frames,
            patch_size=patch_size,
            patch_size_t=patch_size_t,
            temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length,
            activation_fn=activation_fn,
            timestep_activation_fn=timestep_activation_fn,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            use_rotary_positional_embeddings=use_rotary_positional_embeddings,
            use_learned_positional_embeddings=use_learned_positional_embeddings,
            patch_bias=patch_bias,
        )
        # The parent's @register_to_config recorded num_layers=0; restore the truth.
        self.register_to_config(num_layers=num_layers)
        inner_dim = num_attention_heads * attention_head_dim
        self.transformer_blocks = nn.ModuleList(
            [
                DynamiCtrlBlock(
                    dim=inner_dim,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    time_embed_dim=time_embed_dim,
                    dropout=dropout,
                    activation_fn=activation_fn,
                    attention_bias=attention_bias,
                    norm_elementwise_affine=norm_elementwise_affine,
                    norm_eps=norm_eps,
                )
                for _ in range(num_layers)
            ]
        )

    def set_attention_kernel(self, name: str) -> None:
        """Selects the attention kernel of every block ("native", "flash", "flash3", "sage",
        ...; see `models/attention.py`); a clear error if it is not usable here."""
        backend = resolve_attention_kernel(name, self.device)
        for block in self.transformer_blocks:
            block.attn1.processor._attention_backend = backend

    def fuse_qkv_projections(self) -> None:
        """Fuses Q/K/V into one projection and keeps our processor (the parent would swap in
        its own SDPA processor, losing the kernel choice and context parallelism)."""
        for block in self.transformer_blocks:
            block.attn1.fuse_projections(fuse=True)

    def unfuse_qkv_projections(self) -> None:
        for block in self.transformer_blocks:
            block.attn1.fused_projections = False

    def embed_timestep(self, timestep: torch.Tensor, ofs: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """`time_embedding(t) + ofs_embedding(ofs)`, as CogVideoX-1.5 I2V."""
        emb = self.time_embedding(self.time_proj(timestep).to(dtype=dtype))
        if self.ofs_embedding is not None:
            if ofs is None:
                raise ValueError("This transformer has an ofs embedding (CogVideoX-1.5 I2V): pass `ofs` (2.0).")
            emb = emb + self.ofs_embedding(self.ofs_proj(ofs).to(dtype=dtype))
        return emb

    def embed_pose(self, pose_latents: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Pose tokens: the pose latents duplicated to the input channel count and sent
        through the same patch embedding as the video; only the video part is kept."""
        pose = torch.cat([pose_latents, pose_latents], dim=2)
        tokens = self.embedding_dropout(self.patch_embed(encoder_hidden_states, pose))
        return tokens[:, encoder_hidden_states.shape[1] :]

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: int | float | torch.Tensor,
        pose_latents: torch.Tensor,
        ofs: int | float | torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        pose_strength: float = 1.0,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """Predicts the model output (v-prediction) for `hidden_states` (B, F, 2C, H, W).

        `pose_strength` scales the pose injection in every block (`pose_injection`; 1.0 =
        the trained model)."""
        batch_size, num_frames, channels, height, width = hidden_states.shape
        if pose_latents is None:
            raise ValueError("DynamiCtrl needs `pose_latents` (B, F, C, H, W): the VAE latents of the pose video.")
        if pose_latents.shape[1] != num_frames or pose_latents.shape[3:] != hidden_states.shape[3:]:
            raise ValueError(
                f"pose_latents {tuple(pose_latents.shape)} must have the frames and size of the video latents "
                f"{tuple(hidden_states.shape)}."
            )

        parallel = self._dynamictrl_parallel
        if parallel is not None:  # CFG parallelism: this process's part of the batch
            hidden_states, encoder_hidden_states, timestep, pose_latents = parallel.split_batch(
                hidden_states, encoder_hidden_states, timestep, pose_latents
            )
            batch_size = hidden_states.shape[0]
        emb = self.embed_timestep(timestep, ofs, hidden_states.dtype)

        tokens = self.embedding_dropout(self.patch_embed(encoder_hidden_states, hidden_states))
        pose_tokens = self.embed_pose(pose_latents, encoder_hidden_states)
        text_seq_length = encoder_hidden_states.shape[1]
        encoder_hidden_states = tokens[:, :text_seq_length]
        hidden_states = tokens[:, text_seq_length:]
        if parallel is not None:  # context parallelism: this process's slice of the video tokens
            hidden_states, pose_tokens, image_rotary_emb = parallel.shard_tokens(
                hidden_states, pose_tokens, image_rotary_emb
            )

        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                outputs = self._gradient_checkpointing_func(
                    block,
                    hidden_states,
                    encoder_hidden_states,
                    emb,
                    pose_tokens,
                    image_rotary_emb,
                    attention_kwargs,
                    pose_strength,
                )
            else:
                outputs = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    temb=emb,
                    pose_tokens=pose_tokens,
                    image_rotary_emb=image_rotary_emb,
                    attention_kwargs=attention_kwargs,
                    pose_strength=pose_strength,
                )
            hidden_states, encoder_hidden_states = outputs[0], outputs[1]
            # diffusers' block-skipping caches (First Block Cache) return only the video and
            # text streams of skipped blocks; the pose stream is then not needed any more.
            if len(outputs) > 2 and outputs[2] is not None:
                pose_tokens = outputs[2]

        hidden_states = self.norm_final(hidden_states)
        hidden_states = self.norm_out(hidden_states, temb=emb)
        hidden_states = self.proj_out(hidden_states)
        if parallel is not None:
            hidden_states = parallel.gather_tokens(hidden_states)
        output = self._unpatchify(hidden_states, batch_size, num_frames, height, width)
        if parallel is not None:
            output = parallel.gather_batch(output)

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _unpatchify(self, tokens: torch.Tensor, batch_size: int, num_frames: int, height: int, width: int):
        p, p_t = self.config.patch_size, self.config.patch_size_t
        if p_t is None:
            output = tokens.reshape(batch_size, num_frames, height // p, width // p, -1, p, p)
            return output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        output = tokens.reshape(batch_size, (num_frames + p_t - 1) // p_t, height // p, width // p, -1, p_t, p, p)
        return output.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)


# Lets diffusers' cache hooks (First Block Cache, ...) find the video and text outputs.
TransformerBlockRegistry.register(
    model_class=DynamiCtrlBlock,
    metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=1),
)
