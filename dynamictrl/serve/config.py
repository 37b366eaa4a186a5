"""What a Serve replica or a batch worker is built from (plain data: it travels to other
machines inside the deployment description)."""

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

APP_NAME = "dynamictrl"
ROUTE_PREFIX = "/dynamictrl"
GATEWAY = "Gateway"
WORKER = "StudioWorker"


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
    # kind -> "module:function" handler(job, JobContext) -> result; for custom job kinds
    # (the test suite adds crashing and sleeping kinds this way).
    extra_kinds: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.tiny and not self.weights_dir:
            raise ValueError("Tiny mode needs weights_dir: the folder holding the tiny weights.")
        if self.max_retries < 0 or self.max_queued_jobs < 1 or self.job_timeout_s <= 0:
            raise ValueError("max_retries >= 0, max_queued_jobs >= 1 and job_timeout_s > 0 are required.")
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

    @property
    def allowed_roots(self) -> list[Path]:
        return [Path(self.outputs_dir), *(Path(d) for d in self.shared_dirs)]


def build_studio(config: ServeConfig):
    """The Studio a replica or batch worker holds for its whole life."""
    if config.tiny:
        from ..tiny import tiny_studio

        return tiny_studio(config.weights_dir)
    from ..studio import Studio

    return Studio(model=config.model, weights_dir=config.weights_dir, device=config.device, cache_dir=config.cache_dir)


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
