"""Security rules that hold for the whole source tree and the running app."""

import ast
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("dynamictrl/**/*.py"), *ROOT.glob("ui/**/*.py"), *ROOT.glob("benchmarks/**/*.py"), ROOT / "app.py"]


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(node: ast.Call, name: str):
    return next((kw.value for kw in node.keywords if kw.arg == name), None)


def test_no_unsafe_deserialisation_anywhere():
    """Pickle runs code on load: `torch.load` only with weights_only=True, no pickle or
    numpy pickles at all (checkpoints are safetensors or plain tensor dicts)."""
    problems = []
    for path in SOURCES:
        for node, name in calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name == "torch.load" or name.endswith(".torch.load"):
                value = keyword(node, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where} torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load"):
                problems.append(f"{where} {name}")
            if name.endswith("np.load") or name.endswith("numpy.load"):
                value = keyword(node, "allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where} np.load with allow_pickle")
        for node in ast.walk(ast.parse(path.read_text())):
            # `from torch import load` would hide calls from the scan above.
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill", "joblib"):
                if any(alias.name in ("load", "loads") for alias in node.names):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.load")
    assert not problems, problems


def test_the_scan_finds_what_it_looks_for(tmp_path):
    load = "torch." + "load"  # spelled in two parts so text-level scans of this repo don't flag the test itself
    bad = f"import torch, pickle\n{load}('x')\npickle.load(open('y', 'rb'))\n{load}('z', weights_only=False)\n"
    found = [name for _node, name in calls(ast.parse(bad)) if name in ("torch.load", "pickle.load")]
    assert found == ["torch.load", "pickle.load", "torch.load"]


def test_share_is_off_by_default_and_warns_when_on(capsys):
    import app

    assert app.parse_args([]).share is False
    args = app.parse_args(["--share"])
    assert app.launch_warnings(args) and "public" in app.launch_warnings(args)[0]
    assert app.launch_warnings(app.parse_args([])) == []


def test_basic_auth_flag(monkeypatch):
    import app

    assert app.auth_pairs(app.parse_args([])) is None
    assert app.auth_pairs(app.parse_args(["--auth", "ana:s3cret:with:colons"])) == [("ana", "s3cret:with:colons")]
    monkeypatch.setenv("DYNAMICTRL_AUTH", "bo:pw")
    assert app.auth_pairs(app.parse_args([])) == [("bo", "pw")]
    with pytest.raises(SystemExit):
        app.auth_pairs(app.parse_args(["--auth", "no-colon"]))


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_no_file_outside_the_app_folders_is_served(tiny_app, tmp_path):
    outputs = tiny_app.outputs
    outputs.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    link = outputs / "link_to_secret.txt"
    link.symlink_to(secret)
    inside = outputs / "served.txt"
    inside.write_text("fine")
    base = f"{tiny_app.url}gradio_api/file="
    try:
        assert fetch_status(base + str(inside)) == 200  # the check below is not just "everything fails"
        for path in (str(secret), str(link), f"{outputs}/../{secret.name}", f"{outputs}/../../../etc/passwd",
                     "../../etc/passwd", str(ROOT / "weights" / "README.md")):
            assert fetch_status(base + path) in (403, 404), path
    finally:
        link.unlink()
        inside.unlink()
