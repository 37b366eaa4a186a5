import gc
import os
from pathlib import Path

import pytest

# OpenMP threads sleep when they wait instead of spinning: the suite runs processes beside
# each other on 2 cores (tests/background.py), where a spinning thread takes a core from
# a process that has work (measured: 18% less CPU time for the same in-process tests).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never reach a model hub: anything not on disk must fail loudly, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OFFICIAL_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"


def official_fixture(*parts: str) -> Path:
    """A path in tests/fixtures/official: data produced by the official code (see its
    README), part of the repository, so the fidelity tests run in every clone."""
    path = OFFICIAL_FIXTURES.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"reference fixture {path} is missing from the checkout")
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights folder with tiny checkpoints in the real hub layouts: DynamiCtrl (+ mask
    variants) with random weights, and DWPose's two ONNX files with known outputs."""
    from dynamictrl.testing.models import save_tiny_checkpoints
    from dynamictrl.testing.onnx import export_pose, save_tiny_dwpose

    root = save_tiny_checkpoints(tmp_path_factory.mktemp("weights"))
    save_tiny_dwpose(root / "DWPose")
    export_pose(root / "fixed_batch" / "dw-ll_ucoco_384.onnx", dynamic_batch=False)
    return root


@pytest.fixture(scope="session")
def lipsync_weights(tiny_weights) -> Path:
    """The tiny weights folder plus tiny MuseTalk 1.5 (UNet, VAE, whisper, face parsing)."""
    from dynamictrl.testing.musetalk import save_tiny_musetalk

    return save_tiny_musetalk(tiny_weights)


@pytest.fixture(scope="session")
def dwpose_weights(tiny_weights) -> Path:
    return tiny_weights


@pytest.fixture(scope="session")
def detector(dwpose_weights):
    from dynamictrl.pose.detector import DWPoseDetector

    return DWPoseDetector.from_pretrained(weights_dir=dwpose_weights, local_files_only=True, device="cpu")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_weights):
    from dynamictrl import weights
    from dynamictrl.pipeline import DynamiCtrlPipeline

    pipe = DynamiCtrlPipeline.from_pretrained(weights.BASE_REPO, weights_dir=tiny_weights)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The order of the files: first those that run in this process, while the processes that
# some tests start early run beside them (tests/background.py); then the files that use
# the app server, one after another (it idles at ~6% of a core: it stops after the last
# test that needs it); last the files that check the early processes.
APP_SERVER = "tiny_app"
_app_server = {}


def pytest_collection_modifyitems(config, items):
    from tests import background

    app_files = {item.path for item in items if APP_SERVER in item.fixturenames}
    early_files = background.modules()

    def rank(item):
        return 2 if item.path in early_files else 1 if item.path in app_files else 0

    items.sort(key=rank)  # stable: file order kept within each rank


@pytest.fixture(scope="session", autouse=True)
def early_runs(request):
    """Starts the processes that the selected tests check later (tests/background.py)."""
    from tests import background

    if any(APP_SERVER in item.fixturenames for item in request.session.items):
        start_app_server(request.getfixturevalue("tmp_path_factory"))  # up by the time its files run
    names = background.wanted_by(request.session.items)
    if names:
        background.start_in_background(names, request.getfixturevalue)
    yield
    background.stop_all()
    if _app_server.get("server") is not None:  # started here but never used (e.g. -x stopped first)
        _app_server["server"].stop()


def start_app_server(tmp_path_factory):
    from tests.app_server import TinyAppServer

    folder = tmp_path_factory.mktemp("app")
    server = TinyAppServer(outputs=folder / "outputs", log_path=folder / "app.log")
    _app_server["server"] = server
    return server


def pytest_collection_finish(session):
    users = [item for item in session.items if APP_SERVER in item.fixturenames]
    _app_server["last_user"] = users[-1].nodeid if users else None
    # Everything imported so far (torch, diffusers, transformers, gradio, the test modules:
    # ~1M objects) lives as long as the session; frozen, it is no longer walked by every
    # full garbage collection (~0.5 s each here; measured 7 % of three torch-heavy files).
    gc.collect()
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    server = _app_server.get("server")
    if server is not None and item.nodeid == _app_server["last_user"]:
        server.stop()


@pytest.fixture(scope="session")
def tiny_app(tmp_path_factory):
    """`app.py --tiny` running on a free local port (shared by the browser and client tests;
    started with the session when they are selected)."""
    server = _app_server.get("server") or start_app_server(tmp_path_factory)
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()
