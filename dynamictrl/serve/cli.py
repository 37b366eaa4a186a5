"""The `serve` and `batch` subcommands: `add_serve_arguments(parser)` / `run_serve(args)`,
`add_batch_arguments(parser)` / `run_batch(args)`. Ray is imported only when they run.

    python -m dynamictrl serve [--replicas N | --min-replicas A --max-replicas B] [--address auto|ray://head:10001]
    python -m dynamictrl batch --jobs jobs.jsonl [--address auto] [--workers N]
"""

import argparse
import os
import sys
import time
from pathlib import Path

from .config import APP_NAME, MB, ROUTE_PREFIX, TOKEN_ENV, ServeConfig, check_exposure, is_loopback, token_digest

SERVE_HELP = "serve generation, pose extraction and lip-sync on Ray Serve (one replica per GPU) over HTTP"
BATCH_HELP = "run a jobs.jsonl of generate/pose/lip-sync jobs on Ray (resumable; one GPU per worker)"

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def start_local_ray(**options) -> None:
    """`ray.init` of a one-machine Ray whose own ports (GCS, raylet, object manager, agents,
    workers, dashboard) listen on loopback only.

    Ray binds its servers to the node address, and on Linux it replaces a loopback node
    address by the machine's network address unless its "cluster mode" is off; turning it
    off (the switch Ray has for Windows and macOS, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`)
    keeps every server on 127.0.0.1. The variable is set for the processes Ray starts; the
    constant is set too because Ray reads it once, at import. tests/test_serve.py checks
    the listening sockets of every Ray process."""
    import ray
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    options.setdefault("dashboard_host", "127.0.0.1")
    ray.init(_node_ip_address="127.0.0.1", **options)


def init_ray(address: str | None, ship_code: bool = True, log_to_driver: bool = True) -> bool:
    """Connects to `address` ("auto", "ray://head:10001") or starts a local Ray when None
    (bound to loopback: `start_local_ray`). Returns True when this process started Ray (and
    so should stop it). The replicas get the dynamictrl code through the runtime
    environment: PYTHONPATH on this machine, the package uploaded (`py_modules`) on a
    cluster unless `ship_code` is False (then every node needs the repository installed)."""
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        path = os.pathsep.join(p for p in (str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH", "")) if p)
        start_local_ray(runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=log_to_driver)
        return True
    runtime_env = {"py_modules": [str(PACKAGE_DIR)]} if ship_code else {}
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=log_to_driver)
    return False


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto (the one `ray start` made here), ray://head:10001; default: start Ray on this machine",
    )
    parser.add_argument(
        "--no-ship-code",
        action="store_true",
        help="on a cluster, do not upload the dynamictrl package (every node has it installed)",
    )
    parser.add_argument(
        "--weights-dir",
        default=None,
        help="where weights live on the workers (default: $DYNAMICTRL_WEIGHTS or the repository's weights/)",
    )
    parser.add_argument("--model", default="gulucaptain/DynamiCtrl", help="hub id or folder of the base pipeline")
    parser.add_argument("--device", default=None, help="default: the GPU Ray gave the worker, else cpu")
    parser.add_argument("--cache-dir", default=None, help="lip-sync avatar cache on the workers")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny random models (outputs are noise; for trying the setup without weights)",
    )
    parser.add_argument("--max-retries", type=int, default=1, help="reruns of a job whose worker died")
    parser.add_argument("--job-timeout", type=float, default=3 * 3600.0, help="seconds before a job is given up")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    scale = parser.add_argument_group("replicas (one Studio each, one job at a time)")
    scale.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="fixed number of replicas (default: one per GPU in the cluster, 1 without GPUs)",
    )
    scale.add_argument("--min-replicas", type=int, default=None, help="autoscaling: at least this many")
    scale.add_argument("--max-replicas", type=int, default=None, help="autoscaling: at most this many")
    scale.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="default: 1 when the cluster has GPUs, else 0 (CPU replicas). A whole number N > 1: "
        "each replica runs one job at a time across its N GPUs (N processes, --parallel)",
    )
    scale.add_argument(
        "--parallel",
        default=None,
        help="with --gpus-per-replica N > 1: the layout of a replica's N processes, e.g. "
        "cfg=2,ulysses=2 (default ulysses=N); with --device cpu the N processes run on CPUs (gloo)",
    )
    scale.add_argument("--cpus-per-replica", type=float, default=1.0)
    http = parser.add_argument_group("HTTP")
    http.add_argument(
        "--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (then a token is required, or --insecure)"
    )
    http.add_argument("--port", type=int, default=8000)
    http.add_argument(
        "--token",
        default=None,
        help=f"shared token every request must carry (default: ${TOKEN_ENV}; prefer the variable, "
        "a command line is visible to other users of the machine)",
    )
    http.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without a token (anyone who reaches the port can submit jobs)",
    )
    http.add_argument(
        "--max-request-mb",
        type=float,
        default=ServeConfig.max_request_bytes / MB,
        help="larger request bodies are refused (413); a job by value carries its files base64-encoded",
    )
    http.add_argument("--route-prefix", default=ROUTE_PREFIX)
    http.add_argument("--name", default=APP_NAME, help="Serve application name")
    parser.add_argument(
        "--outputs",
        default="outputs/serve",
        help="results of jobs that name a relative 'out' (jobs may read and write here by path)",
    )
    parser.add_argument(
        "--shared-dir",
        action="append",
        default=[],
        help="another folder jobs may use by path (a disk every node mounts); repeatable",
    )
    parser.add_argument("--max-queued", type=int, default=64, help="refuse new jobs while this many wait")
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds for every replica to come up")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="with --address: deploy and exit (the cluster keeps serving; `serve shutdown` stops it)",
    )


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", required=True, help="jobs.jsonl: one JSON job per line (see docs/serving.md)")
    _add_model_arguments(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel workers (default: one per GPU in the cluster, 1 without GPUs)",
    )
    parser.add_argument(
        "--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0"
    )
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument(
        "--transfer",
        choices=("shared", "bytes"),
        default="shared",
        help="shared: workers read and write the paths (one machine, or a shared disk); "
        "bytes: inputs and results travel through Ray (no shared disk needed)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config(args, **extra) -> ServeConfig:
    weights_dir = args.weights_dir
    if args.tiny and not weights_dir:
        weights_dir = str(Path.home() / ".cache" / "dynamictrl" / "tiny-weights")
    return ServeConfig(
        weights_dir=weights_dir,
        device=args.device,
        tiny=args.tiny,
        model=args.model,
        cache_dir=args.cache_dir,
        max_retries=args.max_retries,
        job_timeout_s=args.job_timeout,
        **extra,
    )


def processes_per_replica(gpus_per_replica: float | None, parallel: str | None) -> int:
    """`--gpus-per-replica` as processes per replica: a whole N > 1 is a process group of N
    (one job across N GPUs); a fraction or 1 keeps one process (several replicas may share a GPU)."""
    if gpus_per_replica is None or gpus_per_replica <= 1:
        if parallel:
            raise ValueError("--parallel lays out one replica's processes: give --gpus-per-replica N (N > 1) too.")
        return 1
    if gpus_per_replica != int(gpus_per_replica):
        raise ValueError(
            f"--gpus-per-replica above 1 must be a whole number of GPUs (one process each), got {gpus_per_replica:g}."
        )
    return int(gpus_per_replica)


def run_serve(args) -> int:
    from ray import serve

    from .deployment import deploy, endpoint

    if args.detach and not args.address:
        raise ValueError("--detach needs --address: a Ray started by this command stops when it exits.")
    if args.replicas is not None and (args.min_replicas is not None or args.max_replicas is not None):
        raise ValueError("Give --replicas (a fixed count) or --min-replicas/--max-replicas (autoscaling), not both.")
    token = args.token or os.environ.get(TOKEN_ENV)
    processes = processes_per_replica(args.gpus_per_replica, args.parallel)
    config = _config(
        args,
        outputs_dir=args.outputs,
        shared_dirs=args.shared_dir,
        max_queued_jobs=args.max_queued,
        token_sha256=token_digest(token) if token else None,
        insecure=args.insecure,
        max_request_bytes=int(args.max_request_mb * MB),
        processes_per_replica=processes,
        parallel=args.parallel,
    )
    check_exposure(args.host, config)  # before Ray starts: a refusal costs nothing
    started_ray = init_ray(args.address, ship_code=not args.no_ship_code)
    deploy(
        config,
        name=args.name,
        route_prefix=args.route_prefix,
        host=args.host,
        port=args.port,
        timeout_s=args.start_timeout,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
    )
    url = endpoint(args.host, args.port, args.route_prefix)
    print(f"DynamiCtrl Studio is serving at {url}", flush=True)
    print(
        f"  POST {url}/jobs  ·  GET {url}/jobs/<id>  ·  GET {url}/jobs/<id>/result  ·  "
        f"POST {url}/jobs/<id>/cancel  ·  GET {url}/status",
        flush=True,
    )
    print(
        f"  Python: RemoteStudio(url={url!r}) or RemoteStudio(address='auto', app_name={args.name!r})  ·  "
        f"schema: {url}/docs",
        flush=True,
    )
    if config.token_sha256:
        print(f"  Requests need 'Authorization: Bearer <token>' (RemoteStudio reads {TOKEN_ENV}).", flush=True)
    elif not is_loopback(args.host):
        print("  WARNING: --insecure: anyone who reaches this port can submit jobs.", file=sys.stderr, flush=True)
    if args.detach:
        return 0
    print("Ctrl-C stops the service.", flush=True)
    try:
        while True:
            time.sleep(3600)  # serving until interrupted is the point of this command
    except KeyboardInterrupt:
        print("Stopping...", file=sys.stderr, flush=True)
    finally:
        if started_ray:
            serve.shutdown()
        else:
            serve.delete(args.name)
    return 0


def run_batch(args) -> int:
    import ray

    from .batch import run_batch as run_jobs

    config = _config(args)
    if config.tiny:
        from ..tiny import save_tiny_weights

        save_tiny_weights(config.weights_dir)  # once here, not racing in every worker
    started_ray = init_ray(args.address, ship_code=not args.no_ship_code, log_to_driver=False)
    try:
        summary = run_jobs(
            args.jobs,
            config,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            max_retries=args.max_retries,
            job_timeout_s=args.job_timeout,
            transfer=args.transfer,
            show_progress=not args.no_progress,
        )
    finally:
        if started_ray:
            ray.shutdown()
    print(summary.text(), flush=True)
    return 1 if summary.failed else 0
