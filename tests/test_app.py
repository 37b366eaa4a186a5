import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_layers_point_down_only():
    assert "torch" not in imported_modules(ROOT / "ui")  # ui/ wires widgets, dynamictrl/ computes
    assert not {"gradio", "ui"} & imported_modules(ROOT / "dynamictrl")


def test_app_help_lists_the_flags():
    result = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for flag in ("--host", "--port", "--offload", "--share", "--tiny"):
        assert flag in result.stdout


def test_space_front_matter_pins_gradio():
    readme = (ROOT / "README.md").read_text()
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    pinned = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("gradio=="))
    assert f"sdk_version: {pinned.split('==')[1]}" in front


def test_gpu_duration_grows_with_the_job_and_is_bounded():
    from ui.gpu import estimate_generation_seconds, gpu_job

    small = estimate_generation_seconds(25, 37, 576, 1024)
    official = estimate_generation_seconds(25, 37, 768, 1360)
    assert 60 <= small < official <= 1800
    assert estimate_generation_seconds(200, 101, 2048, 2048) == 1800
    assert gpu_job(60)(len) is len  # no `spaces` package here: a no-op


def test_assets_are_small_and_present():
    for name in ("reference_figure.png", "dance_figure.mp4"):
        assert (ROOT / "assets" / name).stat().st_size < 2 * 1024 * 1024


def test_package_import_is_light_and_cli_help_works():
    code = "import sys, dynamictrl; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False"
    help_text = subprocess.run(
        [sys.executable, "-m", "dynamictrl", "generate", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert help_text.returncode == 0 and "--pose-video" in help_text.stdout
