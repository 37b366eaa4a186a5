"""DynamiCtrl Studio web app: `python app.py` locally, the same file on a Hugging Face Space.

    python app.py [--host 127.0.0.1] [--port 7860] [--offload auto] [--share] [--auth USER:PW] [--tiny]

The page is built in `ui/` over `dynamictrl.studio`. `--tiny` (or DYNAMICTRL_TINY=1)
swaps every model for its tiny random twin from `dynamictrl.testing`, to try the UI without
weights (outputs are noise).
"""

import argparse
import atexit
import gc
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
QUEUE_SIZE = 16  # waiting jobs beyond this get "queue full" instead of waiting for hours


def parse_args(argv=None) -> argparse.Namespace:
    from dynamictrl.manager import OFFLOAD_CHOICES

    parser = argparse.ArgumentParser(description="DynamiCtrl Studio web app.")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (0.0.0.0 to reach it from other machines)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--offload",
        choices=OFFLOAD_CHOICES,
        default="auto",
        help="default memory tier for generation (docs/memory-and-speed.md)",
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        default=os.environ.get("DYNAMICTRL_TINY", "") not in ("", "0"),
        help="tiny random models instead of the real ones (outputs are noise); also DYNAMICTRL_TINY=1",
    )
    parser.add_argument(
        "--outputs",
        type=Path,
        default=None,
        help="folder for results and manifests (default: outputs/, or outputs/tiny/ with --tiny)",
    )
    parser.add_argument(
        "--weights-dir", type=Path, default=None, help="weights folder (default: weights/ or DYNAMICTRL_WEIGHTS)"
    )
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE, help="most jobs waiting in the queue")
    parser.add_argument(
        "--serve-url",
        default=os.environ.get("DYNAMICTRL_SERVE_URL"),
        metavar="URL",
        help="run the jobs on a `python -m dynamictrl serve` service, e.g. http://gpu-box:8000/dynamictrl",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="run the jobs on the Serve app of this Ray cluster (auto; the HTTP URL is the safer choice)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="jobs sent at once with --serve-url/--ray-address (the local backend runs one at a time)",
    )
    parser.add_argument(
        "--shared-history",
        action="store_true",
        help="one results folder and History for every browser session (a single local user; never on a public server)",
    )
    parser.add_argument(
        "--auth",
        default=os.environ.get("DYNAMICTRL_AUTH"),
        metavar="USER:PASSWORD",
        help="ask for this login before the page opens (also DYNAMICTRL_AUTH); off by default",
    )
    return parser.parse_args(argv)


def auth_pairs(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """`--auth user:password` as gradio's auth list; None when no login is asked for."""
    if not args.auth:
        return None
    user, sep, password = args.auth.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth needs USER:PASSWORD (e.g. --auth ana:long-passphrase).")
    return [(user, password)]


def launch_warnings(args: argparse.Namespace) -> list[str]:
    warnings = []
    if args.share:
        warnings.append(
            "--share opens a public gradio.live link: anyone with it can upload files and use "
            "your GPU" + ("." if args.auth else "; consider --auth USER:PASSWORD.")
        )
    return warnings


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def admin_actions_allowed(args: argparse.Namespace) -> bool:
    """Whether the System tab may unload models: behind a login (--auth), or when nobody but
    this machine can reach the page (a loopback address, no --share link, not a Space)."""
    if args.auth:
        return True
    public = args.share or args.host not in LOOPBACK_HOSTS or bool(os.environ.get("SPACE_ID"))
    return not public


def make_work_dir() -> Path:
    """The app's own temp folder (crops, masks, pose videos, gradio's upload cache); removed at exit.
    It lies in the system temp folder, from which gradio accepts a handler's result files."""
    work_dir = Path(tempfile.mkdtemp(prefix="dynamictrl-app-"))
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    return work_dir


def browser_secret(outputs: Path) -> str:
    """The key that encrypts each browser's id in its local storage, kept beside the results
    (readable by this user only) so History still finds a browser's folder after a restart."""
    path = outputs / ".browser-secret"
    if not path.is_file():
        outputs.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def build(args: argparse.Namespace, work_dir: Path):
    """(Blocks, AppConfig, studio) for the arguments."""
    from dynamictrl import weights
    from ui.handlers import TINY_SIZE_PRESET, TINY_SPEED_PRESET, AppConfig
    from ui.layout import build_app

    outputs = Path(args.outputs or ROOT / "outputs" / ("tiny" if args.tiny else "")).resolve()
    config = AppConfig(
        outputs_dir=outputs,
        work_dir=work_dir / "jobs",
        tiny=args.tiny,
        offload=args.offload,
        session_folders=not args.shared_history,
        admin_actions=admin_actions_allowed(args),
        private_dirs=(
            work_dir,
            work_dir.resolve(),
            outputs,
            Path(os.environ.get("GRADIO_TEMP_DIR", work_dir / "gradio")).resolve(),
        ),
        browser_secret=browser_secret(outputs),
    )
    if args.tiny:
        from dynamictrl.tiny import TINY_FRAMES, TINY_SIZE, TINY_STEPS, tiny_studio

        # --weights-dir: where the tiny weights are built (tests take models away from it).
        weights_dir = args.weights_dir or work_dir / "tiny-weights"
        studio = tiny_studio(weights_dir)
        config.size_presets = {TINY_SIZE_PRESET: TINY_SIZE, **config.size_presets}
        config.default_size, config.default_frames, config.default_steps = TINY_SIZE_PRESET, TINY_FRAMES, TINY_STEPS
        config.speed_presets = {TINY_SPEED_PRESET: (TINY_STEPS, 0.0), **config.speed_presets}
        config.default_speed = TINY_SPEED_PRESET
    elif args.serve_url or args.ray_address:
        from dynamictrl.serve.client import RemoteStudio

        studio = RemoteStudio(url=args.serve_url, address=args.ray_address)
        weights_dir = args.weights_dir or weights.default_weights_dir()
    else:
        from dynamictrl.studio import Studio

        studio = Studio(weights_dir=args.weights_dir)
        weights_dir = args.weights_dir or weights.default_weights_dir()
    if hasattr(studio, "auto_download"):
        # Nothing is downloaded on the way: a job whose models are missing gets one message
        # listing them (with a button on the page) before it starts.
        studio.auto_download = False
    return build_app(studio, config), config, Path(weights_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = make_work_dir()
    # Gradio's upload cache inside our temp folder, so everything served lives in two places.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work_dir / "gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    auth = auth_pairs(args)
    for warning in launch_warnings(args):
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    app, config, weights_dir = build(args, work_dir)
    if not config.admin_actions:
        print(
            "NOTE: the System tab's unload buttons are off: this server is reachable by others and has no "
            "--auth login.",
            file=sys.stderr,
            flush=True,
        )
    from starlette.middleware import Middleware

    from dynamictrl.limits import Limits
    from ui.layout import CSS
    from ui.serving import QueueFullMessage, ServedFiles

    remote = bool(args.serve_url or args.ray_address) and not args.tiny
    app.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency if remote else 1)
    # What is imported and built by now (torch, diffusers, transformers, gradio, the page:
    # ~600k objects) lives as long as the server; frozen, it is not walked again by every
    # full garbage collection (~0.4 s each on a laptop core) while jobs run.
    gc.collect()
    gc.freeze()
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        # Larger uploads are refused by the server (DYNAMICTRL_MAX_UPLOAD_MB, default 200).
        max_file_size=f"{Limits.from_env().max_upload_mb:g}mb",
        # Where a handler's result files may come from (gradio copies them into its cache, the
        # only folder ServedFiles lets the page fetch from). Never gradio's upload cache: an
        # allowed folder's files are served inline, whatever their type.
        allowed_paths=[str(config.outputs_dir)],
        blocked_paths=[str(weights_dir), str(ROOT / ".git")],
        app_kwargs={
            "middleware": [
                Middleware(ServedFiles, upload_dir=os.environ["GRADIO_TEMP_DIR"]),
                Middleware(QueueFullMessage, queue_size=args.queue_size),
            ]
        },
        show_error=True,
        ssr_mode=False,
        css=CSS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
