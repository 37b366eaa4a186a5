"""Packaging rules: the product (dynamictrl/, ui/, app.py, benchmarks/) stands on its own.

The tiny models live in `dynamictrl.testing`, so tiny mode, the Ray `--tiny` and the
benchmarks work from an installed package; nothing outside tests/ imports the test suite
or edits `sys.path` to reach it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [*ROOT.glob("dynamictrl/**/*.py"), *ROOT.glob("ui/**/*.py"), *ROOT.glob("benchmarks/**/*.py"), ROOT / "app.py"]
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
