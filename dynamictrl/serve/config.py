"""What a Serve replica or a batch worker is built from (plain data: it travels to other
machines inside the deployment description)."""

import hashlib
import ipaddress
import os
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

APP_NAME = "dynamictrl"
ROUTE_PREFIX = "/dynamictrl"
GATEWAY = "Gateway"
WORKER = "StudioWorker"
TOKEN_ENV = "DYNAMICTRL_SERVE_TOKEN"  # the shared token, for `serve` and for clients (RemoteStudio)
MIN_TOKEN_CHARS = 16
MB = 1_000_000


@dataclass
class ServeConfig:
    weights_dir: str | None = None  # tiny mode: the folder of tiny weights (built before deploying)
    device: str | None = None  # None: cuda if the replica got a GPU, else cpu
    tiny: bool = False  # tiny random models (tests, demos): dynamictrl.tiny.tiny_studio(weights_dir)
    outputs_dir: str = "outputs/serve"  # relative job paths land here; jobs may read and write in it
    shared_dirs: list[str] = field(default_factory=list)  # more folders jobs may use by path (shared disks)
    model: str = "gulucaptain/DynamiCtrl"
    cache_dir: str | None = None  # lip-sync avatars (default ~/.cache/dynamictrl)
    max_retries: int = 1  # reruns of a job whose replica died while running it
    job_timeout_s: float = 3 * 3600.0  # a job still unfinished after this (queue included) fails
    max_queued_jobs: int = 64  # submissions beyond this many waiting jobs are refused
    result_ttl_s: float = 3600.0  # finished results not fetched within this are dropped
    # HTTP: the SHA-256 of the shared token every request but /healthz and /docs must carry
    # (None: no token). Only the digest travels in the deployment description.
    token_sha256: str | None = None
    insecure: bool = False  # serve on a non-loopback address without a token (explicitly asked for)
    # Request bodies larger than this are refused with 413 before they are read whole
    # (a job by value carries its files base64-encoded: ~4/3 of their size).
    max_request_bytes: int = 300 * MB
    # kind -> "module:function" handler(job, JobContext) -> result; for custom job kinds
    # (the test suite adds crashing and sleeping kinds this way).
    extra_kinds: dict[str, str] = field(default_factory=dict)
    # One job across several processes (`serve --gpus-per-replica N`, dynamictrl/serve/group.py):
    # each replica starts this many processes in one torch.distributed group (one GPU each,
    # or CPU processes on gloo when `device` is "cpu"), laid out as `parallel` (default
    # ulysses=N). 1: the replica runs jobs itself, as before.
    processes_per_replica: int = 1
    parallel: str | None = None

    def __post_init__(self):
        if self.tiny and not self.weights_dir:
            raise ValueError("Tiny mode needs weights_dir: the folder holding the tiny weights.")
        if self.max_retries < 0 or self.max_queued_jobs < 1 or self.job_timeout_s <= 0:
            raise ValueError("max_retries >= 0, max_queued_jobs >= 1 and job_timeout_s > 0 are required.")
        if self.max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be at least 1024, got {self.max_request_bytes}.")
        self.check_layout()
        self.outputs_dir = str(Path(os.path.expanduser(self.outputs_dir)).resolve())
        self.shared_dirs = [str(Path(os.path.expanduser(d)).resolve()) for d in self.shared_dirs]
        if self.weights_dir:
            self.weights_dir = str(Path(os.path.expanduser(self.weights_dir)).resolve())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ServeConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def check_layout(self) -> None:
        if not isinstance(self.processes_per_replica, int) or self.processes_per_replica < 1:
            raise ValueError(
                f"processes_per_replica (--gpus-per-replica) must be a whole number >= 1, "
                f"got {self.processes_per_replica!r}."
            )
        if self.processes_per_replica == 1 and not self.parallel:
            return  # one process: nothing to lay out (and torch stays unimported in the gateway)
        layout = self.layout
        if layout.world_size != self.processes_per_replica:
            raise ValueError(
                f"--parallel {layout} needs {layout.world_size} processes, but each replica has "
                f"{self.processes_per_replica} (--gpus-per-replica): make them equal."
            )

    @property
    def layout(self):
        """The parallel layout of a replica's process group (ulysses=N unless `parallel` says)."""
        from ..parallel import ParallelLayout

        if self.parallel:
            return ParallelLayout.parse(self.parallel)
        # Ulysses splits the sequence, so it works for every job (cfg=2 needs guidance > 1);
        # N must divide the attention heads (48 in the 5B model: 2, 3, 4, 6, 8 do).
        return ParallelLayout(ulysses=self.processes_per_replica)

    @property
    def allowed_roots(self) -> list[Path]:
        return [Path(self.outputs_dir), *(Path(d) for d in self.shared_dirs)]


def token_digest(token: str) -> str:
    """What the service keeps of a shared token (SHA-256 hex); refuses guessable tokens."""
    token = (token or "").strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"The serve token must be at least {MIN_TOKEN_CHARS} characters; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'."
        )
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return False
        return bool(addresses) and all(is_loopback(a) for a in addresses)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_exposure(host: str, config: ServeConfig) -> None:
    """Serving beyond this machine needs a token, or `insecure` said out loud."""
    if is_loopback(host) or config.token_sha256 or config.insecure:
        return
    raise ValueError(
        f"Serving on {host} lets other machines submit jobs: set a token ({TOKEN_ENV}=... or "
        "--token; clients send it too) or pass --insecure to serve without one."
    )


def build_studio(config: ServeConfig, parallel=None):
    """The Studio a replica or batch worker holds for its whole life. `parallel`: the
    layout of the process group this process belongs to (one rank of a multi-process
    replica, `dynamictrl.serve.group`)."""
    if config.tiny:
        from ..tiny import tiny_studio

        return tiny_studio(config.weights_dir, parallel=parallel)
    from ..studio import Studio

    return Studio(
        model=config.model,
        weights_dir=config.weights_dir,
        device=config.device,
        cache_dir=config.cache_dir,
        parallel=parallel,
    )


def load_extra_kinds(config: ServeConfig) -> dict:
    """The custom job kinds of a config, imported ("module:function")."""
    import importlib

    kinds = {}
    for kind, target in config.extra_kinds.items():
        module_name, _, function = target.partition(":")
        if not function:
            raise ValueError(f"extra_kinds[{kind!r}] must be 'module:function', got {target!r}.")
        kinds[kind] = getattr(importlib.import_module(module_name), function)
    return kinds
