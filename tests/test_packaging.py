"""Packaging rules: the product (dynamictrl/, ui/, app.py, benchmarks/) stands on its own.

The tiny models live in `dynamictrl.testing`, so tiny mode, the Ray `--tiny` and the
benchmarks work from an installed package; nothing outside tests/ imports the test suite
or edits `sys.path` to reach it.
"""

import ast
from pathlib import Path

import pytest

from tests import background

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [
    *ROOT.glob("dynamictrl/**/*.py"),
    *ROOT.glob("ui/**/*.py"),
    *ROOT.glob("benchmarks/**/*.py"),
    ROOT / "app.py",
]
TEST_SUITE_MODULES = {"tests", "conftest", "app_server", "ray_jobs", "badinputs"}


def imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module


def problems_in(source: str, where: str) -> list[str]:
    problems = []
    tree = ast.parse(source)
    for node, module in imported_modules(tree):
        top = module.split(".")[0]
        if top in TEST_SUITE_MODULES or top.startswith(("test_", "tiny_")):
            problems.append(f"{where}:{node.lineno} imports the test suite ({module})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
            problems.append(f"{where}:{node.lineno} touches sys.path")
    return problems


def test_the_product_never_imports_the_test_suite_nor_edits_sys_path():
    problems = []
    for path in PRODUCT:
        problems += problems_in(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, problems


def test_the_scan_finds_what_it_looks_for():
    bad = "import sys\nsys.path.insert(0, 'tests')\nfrom tiny_models import x\nimport tests.conftest\nfrom conftest import y\n"
    found = problems_in(bad, "bad.py")
    assert [line.split(" ", 1)[1] for line in found] == [
        "imports the test suite (tiny_models)",
        "imports the test suite (tests.conftest)",
        "imports the test suite (conftest)",
        "touches sys.path",
    ]


def test_the_tiny_builders_are_part_of_the_package():
    from dynamictrl import tiny
    from dynamictrl.testing import eval, face_parser, models, musetalk, onnx, qwen, sam, whisper

    for module in (eval, face_parser, models, musetalk, onnx, qwen, sam, whisper):
        assert Path(module.__file__).parent == ROOT / "dynamictrl" / "testing"
    assert callable(tiny.save_tiny_weights) and callable(tiny.tiny_studio)


def test_weights_default_to_the_checkout_or_else_the_current_folder(tmp_path, monkeypatch):
    from dynamictrl import weights

    monkeypatch.delenv("DYNAMICTRL_WEIGHTS", raising=False)
    assert weights.default_weights_dir() == ROOT / "weights"  # this checkout has pyproject.toml
    installed = tmp_path / "site-packages"  # an installed package: no pyproject.toml beside it
    installed.mkdir()
    monkeypatch.setattr(weights, "PROJECT_ROOT", installed)
    monkeypatch.chdir(tmp_path)
    assert weights.default_weights_dir() == tmp_path / "weights"
    monkeypatch.setenv("DYNAMICTRL_WEIGHTS", str(tmp_path / "elsewhere"))
    assert weights.default_weights_dir() == tmp_path / "elsewhere"


# ------------------------------------------------------------------ dependencies
def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file (following `-r`), by normalised name."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e"):
            continue
        if line.startswith("-r"):
            pins |= read_pins(path.parent / line[2:].strip())
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {line} is not pinned with =="
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def pyproject_requirements() -> dict[str | None, list]:
    """The pyproject's dependencies by extra (None = the core), self-references left out."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {None: project["dependencies"], **project["optional-dependencies"]}
    return {extra: [r for r in map(Requirement, lines) if r.name != project["name"]] for extra, lines in groups.items()}


def test_requirements_txt_is_the_app_runtime_only():
    pins = read_pins(ROOT / "requirements.txt")
    for tool in ("pytest", "playwright", "ray", "ruff", "peft", "lpips", "scikit-image"):
        assert tool not in pins, f"requirements.txt (what a Space installs) must not hold {tool}"
    assert {"torch", "diffusers", "transformers", "gradio", "onnx"} <= set(pins)


def test_pins_and_pyproject_agree():
    """Every pyproject dependency is pinned in requirements.txt (core + app) or
    requirements-dev.txt (the other extras), at a version its specifier allows, and every
    pin is a dependency of some group."""
    from packaging.utils import canonicalize_name

    runtime = read_pins(ROOT / "requirements.txt")
    everything = read_pins(ROOT / "requirements-dev.txt")
    declared = set()
    for extra, requirements in pyproject_requirements().items():
        pins = runtime if extra in (None, "app") else everything
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            declared.add(name)
            assert name in pins, f"{requirement} (extra {extra}) is not pinned"
            assert requirement.specifier.contains(pins[name]), f"{requirement} does not allow the pin {pins[name]}"
    assert set(everything) == declared, f"pinned but not in pyproject.toml: {set(everything) - declared}"


def test_the_console_script_is_the_cli():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["dynamictrl"].split(":")
    import importlib

    from dynamictrl import cli

    assert getattr(importlib.import_module(module), function) is cli.main


# ------------------------------------------------------------------ the core without the extras
WITHOUT_EXTRAS = """
import sys
for name in ("ray", "peft", "lpips", "skimage", "pytest", "playwright"):
    sys.modules[name] = None  # importing it fails as if it were not installed
import app
import dynamictrl.data, dynamictrl.eval, dynamictrl.lipsync.pipeline, dynamictrl.pipeline, dynamictrl.serve
import dynamictrl.studio, dynamictrl.tiny, dynamictrl.train
from dynamictrl.cli import main
from ui.layout import build_app
app.parse_args([])
sys.exit(main(["serve", "--tiny"]))
"""


@pytest.mark.slow  # a fresh interpreter importing torch, diffusers and gradio
def test_the_core_and_the_app_import_without_the_extras_and_a_command_names_its_extra(request):
    """requirements.txt (a Space) has no Ray, peft, lpips, scikit-image or test tools: the
    app, the API and the CLI's parser must not need them, and a command that does says
    which extra installs it."""
    result = background.result("without the extras", request.getfixturevalue).wait()
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "error: `serve` needs ray, from the optional extra `serve`: pip install 'dynamictrl-studio[serve]' "
        "(in a checkout: pip install -r requirements-dev.txt)"
    )


def start_without_extras(getfixturevalue):
    """The fresh interpreter, started early (tests/background.py)."""
    import sys

    return lambda: background.Run([sys.executable, "-c", WITHOUT_EXTRAS], cwd=ROOT)


background.early(
    "without the extras",
    start_without_extras,
    __file__,
    ("test_the_core_and_the_app_import_without_the_extras_and_a_command_names_its_extra",),
)
