"""One clip on several processes (GPUs): context parallelism and CFG parallelism.

Layout `ulysses=U,ring=R,cfg=C` uses U*R*C processes (started by `torchrun`). Global rank
r = c*(R*U) + g*U + u: `c` picks the half of the CFG batch (negative / positive prompt),
`g` the ring position, `u` the Ulysses position.

Context parallelism (U*R > 1) splits the *video tokens* and the *pose tokens* of every
window the same way along the sequence (process (g, u) holds chunk g*U + u; sizes may
differ by one token). The 226 text tokens of CogVideoX's joint attention are replicated on
every process (they are ~1% of the tokens, and splitting them would need padding + masks,
which flash kernels do not take). Around each attention call:

- Ulysses: an all-to-all turns "my tokens, all heads" into "the Ulysses group's tokens, my
  heads" (H/U heads); the text query/key/value are just sliced to the same heads. After the
  kernel the reverse all-to-all returns the video output; the text output heads are
  all-gathered.
- Ring: the keys/values of the ring group's chunks are all-gathered (diffusers' ring also
  rotates by all-gather), so each process runs *one* kernel call of its queries against all
  keys: exact, and usable with every kernel (no log-sum-exp merge needed).

RoPE is sliced with the tokens; the output projection is all-gathered before unpatchify.
CFG parallelism (C = 2) runs the negative half of the batch on c = 0 and the positive half
on c = 1 and all-gathers the predictions, so every process combines them (dynamic CFG
included) and takes the same scheduler step: all processes hold the same latents, and
rank 0 writes the outputs.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DIMENSIONS = ("ulysses", "ring", "cfg")
# Collectives that wait longer than this fail (a rank that hangs ends the job instead of
# hanging it); torchrun ends the other ranks as soon as one exits with an error.
DEFAULT_TIMEOUT_S = float(os.environ.get("DYNAMICTRL_PARALLEL_TIMEOUT_S", "600"))


@dataclass(frozen=True)
class ParallelLayout:
    """How many processes share one job, per kind of parallelism."""

    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    def __post_init__(self):
        for name in DIMENSIONS:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"parallel {name} must be a whole number >= 1, got {value!r}.")
        if self.cfg > 2:
            raise ValueError(f"cfg parallelism splits the [negative, positive] batch: cfg is 1 or 2, got {self.cfg}.")

    @classmethod
    def parse(cls, text: str | None) -> "ParallelLayout":
        """`"ulysses=2,ring=1,cfg=2"` (any subset, any order; empty or None: one process)."""
        if text is None or not text.strip():
            return cls()
        values = {}
        for part in text.split(","):
            name, sep, number = part.strip().partition("=")
            name = name.strip()
            if not sep or name not in DIMENSIONS:
                raise ValueError(
                    f"--parallel takes name=N pairs from {DIMENSIONS}, e.g. ulysses=2,cfg=2 (got {part!r})."
                )
            if name in values:
                raise ValueError(f"--parallel names {name} twice.")
            try:
                values[name] = int(number)
            except ValueError as error:
                raise ValueError(f"--parallel {name} must be a whole number, got {number.strip()!r}.") from error
        return cls(**values)

    @property
    def sequence_degree(self) -> int:
        return self.ulysses * self.ring

    @property
    def world_size(self) -> int:
        return self.ulysses * self.ring * self.cfg

    def as_dict(self) -> dict:
        return {"ulysses": self.ulysses, "ring": self.ring, "cfg": self.cfg}

    def __str__(self) -> str:
        return ",".join(f"{name}={getattr(self, name)}" for name in DIMENSIONS)


def as_layout(parallel) -> ParallelLayout:
    if parallel is None:
        return ParallelLayout()
    if isinstance(parallel, ParallelLayout):
        return parallel
    if isinstance(parallel, str):
        return ParallelLayout.parse(parallel)
    if isinstance(parallel, dict):
        return ParallelLayout(**parallel)
    raise ValueError(f"parallel must be a layout string like 'ulysses=2,cfg=2', got {type(parallel).__name__}.")


# ------------------------------------------------------------------ process groups
@dataclass
class ProcessMesh:
    """This process's place in a layout and the groups it communicates in."""

    layout: ParallelLayout
    rank: int
    device: str
    cfg_rank: int
    ring_rank: int
    ulysses_rank: int
    cfg_group: object = None
    sequence_group: object = None  # the U*R processes sharing one CFG half
    ring_group: object = None
    ulysses_group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sequence_rank(self) -> int:
        return self.ring_rank * self.layout.ulysses + self.ulysses_rank


def init_process_group(layout: ParallelLayout, device: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Joins the process group torchrun set up (gloo on the CPU, NCCL on GPUs) and returns
    this process's device (cuda:LOCAL_RANK on GPUs)."""
    if "WORLD_SIZE" not in os.environ:
        raise ValueError(
            f"--parallel {layout} needs {layout.world_size} processes: run it with "
            f"torchrun --nproc-per-node {layout.world_size} -m dynamictrl generate ..."
        )
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size != layout.world_size:
        raise ValueError(
            f"--parallel {layout} needs exactly {layout.world_size} processes, torchrun started {world_size}: "
            f"use --nproc-per-node {layout.world_size}."
        )
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"Process {local_rank} has no GPU: {torch.cuda.device_count()} visible, {world_size} processes."
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return device


def build_mesh(layout: ParallelLayout, device: str) -> ProcessMesh:
    """The groups of `layout` in the running process group (every process calls this, in
    the same order: `new_group` is collective)."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call init_process_group first.")
    if dist.get_world_size() != layout.world_size:
        raise ValueError(f"Layout {layout} needs {layout.world_size} processes, the group has {dist.get_world_size()}.")
    rank = dist.get_rank()
    U, R, C = layout.ulysses, layout.ring, layout.cfg
    cfg_rank, rest = divmod(rank, U * R)
    ring_rank, ulysses_rank = divmod(rest, U)
    mesh = ProcessMesh(layout, rank, device, cfg_rank, ring_rank, ulysses_rank)

    def rank_of(c, g, u):
        return c * U * R + g * U + u

    # new_group is collective over the whole world: every process creates every group.
    if C > 1:
        for g in range(R):
            for u in range(U):
                group = dist.new_group([rank_of(c, g, u) for c in range(C)])
                if (g, u) == (ring_rank, ulysses_rank):
                    mesh.cfg_group = group
    if U * R > 1:
        for c in range(C):
            group = dist.new_group([rank_of(c, g, u) for g in range(R) for u in range(U)])
            if c == cfg_rank:
                mesh.sequence_group = group
    if R > 1:
        for c in range(C):
            for u in range(U):
                group = dist.new_group([rank_of(c, g, u) for g in range(R)])
                if (c, u) == (cfg_rank, ulysses_rank):
                    mesh.ring_group = group
    if U > 1:
        for c in range(C):
            for g in range(R):
                group = dist.new_group([rank_of(c, g, u) for u in range(U)])
                if (c, g) == (cfg_rank, ring_rank):
                    mesh.ulysses_group = group
    return mesh


def broadcast_text(text: str, mesh: ProcessMesh) -> str:
    """Rank 0's string on every rank (e.g. an auto caption), as UTF-8 bytes in a tensor."""
    device = mesh.device if mesh.device.startswith("cuda") else "cpu"
    data = torch.tensor(list(text.encode("utf-8")) if mesh.is_main else [], dtype=torch.uint8)
    length = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    buffer = data.to(device) if mesh.is_main else torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode("utf-8")


# ------------------------------------------------------------------ collectives
def chunk_sizes(total: int, parts: int) -> list[int]:
    """Sizes of `torch.tensor_split(x, parts)`: the first `total % parts` chunks get one more."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _pad_dim(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if x.shape[dim] == size:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def all_gather_dim(x: torch.Tensor, dim: int, sizes: list[int], group) -> torch.Tensor:
    """Concatenation along `dim` of every group member's `x` (member i has `sizes[i]` there);
    chunks are padded to the largest for transport only."""
    largest = max(sizes)
    padded = _pad_dim(x, dim, largest)
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([part.narrow(dim, 0, size) for part, size in zip(gathered, sizes, strict=True)], dim=dim)


def ulysses_heads_to_sequence(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """(B, s_mine, H, D) -> (B, sum(sizes), H/U, D): the Ulysses group's tokens, my heads."""
    U = len(sizes)
    batch, _, heads, head_dim = x.shape
    largest = max(sizes)
    send = _pad_dim(x, 1, largest).reshape(batch, largest, U, heads // U, head_dim)
    send = send.permute(2, 0, 1, 3, 4).contiguous()  # slot j: my tokens, heads of member j
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)  # slot j: member j's tokens, my heads
    return torch.cat([received[j, :, : sizes[j]] for j in range(U)], dim=1)


def ulysses_sequence_to_heads(x: torch.Tensor, sizes: list[int], my_index: int, group) -> torch.Tensor:
    """The inverse: (B, sum(sizes), H/U, D) -> (B, s_mine, H, D)."""
    U = len(sizes)
    batch, _, local_heads, head_dim = x.shape
    largest = max(sizes)
    send = torch.stack([_pad_dim(part, 1, largest) for part in x.split(sizes, dim=1)]).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)  # slot j: my tokens, heads of member j
    mine = received[:, :, : sizes[my_index]]  # (U, B, s_mine, H/U, D)
    return mine.permute(1, 2, 0, 3, 4).reshape(batch, sizes[my_index], U * local_heads, head_dim)


# ------------------------------------------------------------------ context parallel attention
class SequenceParallel:
    """The video-token split of one layout and the attention around it (see the module doc).
    One object per transformer; `set_video_tokens` is called once per forward."""

    def __init__(self, mesh: ProcessMesh):
        self.mesh = mesh
        self.degree = mesh.layout.sequence_degree
        self.ulysses = mesh.layout.ulysses
        self.video_tokens = None

    def set_video_tokens(self, total: int) -> None:
        if total < self.degree:
            raise ValueError(f"{total} video tokens cannot be split across {self.degree} processes.")
        self.video_tokens = total
        self.sizes = chunk_sizes(total, self.degree)  # chunk k = ring g * U + ulysses u
        U = self.ulysses
        g = self.mesh.ring_rank
        self.ulysses_sizes = self.sizes[g * U : (g + 1) * U]  # the chunks of my ring position
        self.ring_sizes = [sum(self.sizes[r * U : (r + 1) * U]) for r in range(self.mesh.layout.ring)]

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.tensor_split(self.degree, dim=dim)[self.mesh.sequence_rank]

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return all_gather_dim(x, dim, self.sizes, self.mesh.sequence_group)

    def attention(self, query, key, value, text_seq_length: int, attend) -> torch.Tensor:
        """Joint attention for (B, text + my video tokens, H, D) inputs; returns the same shape."""
        mesh = self.mesh
        T = text_seq_length
        text = [x[:, :T] for x in (query, key, value)]
        video = [x[:, T:] for x in (query, key, value)]
        heads = query.shape[2]
        if self.ulysses > 1:
            if heads % self.ulysses:
                raise ValueError(f"ulysses={self.ulysses} must divide the {heads} attention heads.")
            local = heads // self.ulysses
            mine = slice(mesh.ulysses_rank * local, (mesh.ulysses_rank + 1) * local)
            text = [x[:, :, mine] for x in text]
            video = [ulysses_heads_to_sequence(x, self.ulysses_sizes, mesh.ulysses_group) for x in video]
        if mesh.layout.ring > 1:  # every ring chunk's keys and values, in chunk order
            video[1] = all_gather_dim(video[1], 1, self.ring_sizes, mesh.ring_group)
            video[2] = all_gather_dim(video[2], 1, self.ring_sizes, mesh.ring_group)
        joint = [torch.cat([t, v], dim=1) for t, v in zip(text, video, strict=True)]
        out = attend(*joint)
        text_out, video_out = out[:, :T], out[:, T:]
        if self.ulysses > 1:
            video_out = ulysses_sequence_to_heads(video_out, self.ulysses_sizes, mesh.ulysses_rank, mesh.ulysses_group)
            text_out = all_gather_dim(text_out, 2, [text_out.shape[2]] * self.ulysses, mesh.ulysses_group)
        return torch.cat([text_out, video_out], dim=1)


# ------------------------------------------------------------------ the transformer's hooks
class TransformerParallel:
    """What `DynamiCtrlTransformerModel.forward` calls when parallelism is applied."""

    def __init__(self, mesh: ProcessMesh):
        self.mesh = mesh
        self.sequence = SequenceParallel(mesh) if mesh.layout.sequence_degree > 1 else None

    def split_batch(self, hidden_states, encoder_hidden_states, timestep, pose_latents):
        C = self.mesh.layout.cfg
        if C == 1:
            return hidden_states, encoder_hidden_states, timestep, pose_latents
        batch = hidden_states.shape[0]
        if batch % C:
            raise ValueError(
                f"cfg={C} splits the [negative, positive] batch across processes, but the batch has {batch} "
                "entries: CFG parallelism needs guidance > 1."
            )
        index = self.mesh.cfg_rank

        def part(x):
            if isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == batch:
                return x.chunk(C)[index]
            return x

        return part(hidden_states), part(encoder_hidden_states), part(timestep), part(pose_latents)

    def gather_batch(self, output: torch.Tensor) -> torch.Tensor:
        C = self.mesh.layout.cfg
        if C == 1:
            return output
        return all_gather_dim(output, 0, [output.shape[0]] * C, self.mesh.cfg_group)

    def shard_tokens(self, video_tokens, pose_tokens, image_rotary_emb):
        if self.sequence is None:
            return video_tokens, pose_tokens, image_rotary_emb
        self.sequence.set_video_tokens(video_tokens.shape[1])
        if pose_tokens.shape[1] != video_tokens.shape[1]:
            raise ValueError(f"{pose_tokens.shape[1]} pose tokens for {video_tokens.shape[1]} video tokens.")
        if image_rotary_emb is not None:
            image_rotary_emb = tuple(self.sequence.shard(x, 0) for x in image_rotary_emb)
        return self.sequence.shard(video_tokens, 1), self.sequence.shard(pose_tokens, 1), image_rotary_emb

    def gather_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.sequence is None:
            return tokens
        return self.sequence.gather(tokens, 1)


def apply_parallel(transformer, mesh: ProcessMesh | None) -> None:
    """Makes `transformer` run its part of each forward in `mesh` (None: undo)."""
    if mesh is None or mesh.layout.world_size == 1:
        runtime = None
    else:
        runtime = TransformerParallel(mesh)
        if getattr(transformer, "is_cache_enabled", False):
            raise ValueError(
                "Block caches (First Block Cache, Pyramid Attention Broadcast) are not supported with --parallel: "
                "each process would decide to skip blocks on its own part of the batch or sequence."
            )
    transformer._dynamictrl_parallel = runtime
    sequence = runtime.sequence if runtime is not None else None
    for block in transformer.transformer_blocks:
        block.attn1.processor.sequence_parallel = sequence


def setup(parallel, device: str | None) -> ProcessMesh | None:
    """From a layout (string, dict or `ParallelLayout`) to this process's mesh, joining the
    torchrun process group; None for a single process."""
    layout = as_layout(parallel)
    if layout.world_size == 1:
        return None
    device = init_process_group(layout, device)
    return build_mesh(layout, device)
