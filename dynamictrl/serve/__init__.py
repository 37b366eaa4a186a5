"""The Ray service: a Serve deployment of Studio replicas, a client with the Studio's
methods, and batch jobs. A thin adapter over `dynamictrl.studio` (see docs/architecture.md).

- `dynamictrl.serve.jobs`: a job as plain data, run on any Studio (no Ray).
- `dynamictrl.serve.schema`: the one job schema, derived from the settings dataclasses.
- `dynamictrl.serve.deployment`: the Serve application (`deploy`, `build_app`).
- `dynamictrl.serve.http_api`: its HTTP face (token, job owners, body limit, /docs);
  see docs/serving-security.md.
- `dynamictrl.serve.client`: `RemoteStudio`, the app's backend when the GPUs are elsewhere.
- `dynamictrl.serve.batch`: `run_batch`, a jobs.jsonl on a pool of Ray workers.
- `dynamictrl.serve.cli`: the `serve` and `batch` subcommands.

Ray is imported by the modules that need it, not here.
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
