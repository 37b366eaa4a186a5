import shutil

import pytest

from dynamictrl import weights


def test_existing_folder_is_used_as_is(tmp_path):
    assert weights.resolve(tmp_path) == tmp_path


def test_weights_dir_is_searched_by_repo_name(tiny_weights):
    assert weights.resolve("gulucaptain/DynamiCtrl", tiny_weights) == tiny_weights / "DynamiCtrl"
    assert weights.resolve(weights.VARIANTS["mask_background"], tiny_weights) == tiny_weights / "Dynamictrl-Mask_B01"


def test_env_var_sets_the_default_weights_dir(tiny_weights, monkeypatch):
    monkeypatch.setenv("DYNAMICTRL_WEIGHTS", str(tiny_weights))
    assert weights.resolve("gulucaptain/DynamiCtrl") == tiny_weights / "DynamiCtrl"


def test_offline_and_missing_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsNotFoundError) as error:
        weights.resolve("gulucaptain/DynamiCtrl", tmp_path)
    assert "python -m dynamictrl download" in str(error.value)
    assert str(tmp_path / "DynamiCtrl") in str(error.value)
    with pytest.raises(weights.WeightsNotFoundError, match="python -m dynamictrl download mask_clothing"):
        weights.resolve(weights.VARIANTS["mask_clothing"], tmp_path)


def test_local_files_only_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda **kw: pytest.fail("tried to download"))
    with pytest.raises(weights.WeightsNotFoundError):
        weights.resolve("gulucaptain/DynamiCtrl", tmp_path, local_files_only=True)


def test_a_partial_folder_without_config_is_downloaded_again(tmp_path, tiny_weights, monkeypatch):
    """snapshot_download resumes into weights/<name>; the result is then loadable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    (tmp_path / "DynamiCtrl").mkdir()  # an interrupted download left an empty folder
    calls = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns=None):
        calls.append((repo_id, local_dir))
        shutil.copytree(tiny_weights / "DynamiCtrl", local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    path = weights.resolve("gulucaptain/DynamiCtrl", tmp_path)
    assert calls == [("gulucaptain/DynamiCtrl", str(tmp_path / "DynamiCtrl"))]
    assert (path / "transformer" / "config.json").is_file()

    from dynamictrl.pipeline import DynamiCtrlPipeline

    pipe = DynamiCtrlPipeline.from_pretrained(weights.BASE_REPO, weights_dir=tmp_path)
    assert pipe.transformer.config.num_layers == 2


def test_network_failure_becomes_a_clear_error(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def unreachable(**kwargs):
        raise LocalEntryNotFoundError("Cannot reach the hub")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    with pytest.raises(weights.WeightsNotFoundError, match="python -m dynamictrl download"):
        weights.resolve("gulucaptain/DynamiCtrl", tmp_path)


@pytest.mark.parametrize("bad", ["not-a-repo", "a/b/c", "./missing/folder"])
def test_neither_folder_nor_hub_id(tmp_path, bad):
    with pytest.raises(weights.WeightsNotFoundError, match="neither an existing folder"):
        weights.resolve(bad, tmp_path)


def test_variant_names():
    assert weights.variant_repo(None) is None
    assert weights.variant_repo("mask_background") == "gulucaptain/Dynamictrl-Mask_B01"
    assert weights.variant_repo("mask_clothing") == "gulucaptain/Dynamictrl-Mask_C01"
    with pytest.raises(ValueError, match="Unknown variant"):
        weights.variant_repo("mask_face")


def test_tokenizer_only_fetches_the_tokenizer_files(tmp_path, tiny_weights, monkeypatch):
    """Captions and prompt checks need T5's tokenizer: a few files, not the 22 GB repo."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        shutil.copytree(tiny_weights / "DynamiCtrl" / "tokenizer", f"{local_dir}/tokenizer", dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    folder = weights.resolve_tokenizer(weights.BASE_REPO, tmp_path)
    assert calls == [(weights.BASE_REPO, ["tokenizer/*"])]
    assert folder == tmp_path / "DynamiCtrl" and sorted(p.name for p in folder.iterdir()) == ["tokenizer"]

    from dynamictrl.studio import Studio

    tokenizer = Studio(weights_dir=tmp_path, device="cpu").t5_tokenizer()  # loads from the tokenizer-only folder
    assert len(tokenizer("a person dancing")["input_ids"]) > 1
    assert len(calls) == 1  # already there: no second download
    from dynamictrl import catalog

    assert catalog.status("base", tmp_path).state == catalog.PARTIAL  # the models are still to come
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsNotFoundError, match="python -m dynamictrl download base"):
        weights.resolve_tokenizer(weights.BASE_REPO, tmp_path / "empty")
