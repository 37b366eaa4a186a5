import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_app_placeholder_points_to_the_cli():
    result = subprocess.run([sys.executable, "app.py"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    assert "python -m dynamictrl generate" in result.stdout


def test_package_import_is_light_and_cli_help_works():
    code = "import sys, dynamictrl; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False"
    help_text = subprocess.run(
        [sys.executable, "-m", "dynamictrl", "generate", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert help_text.returncode == 0 and "--pose-video" in help_text.stdout
