import json
import shutil

import pytest
import torch

from dynamictrl import weights
from dynamictrl.lipsync.models import MuseTalkModels, load_unet
from dynamictrl.weights import WeightsNotFoundError


@pytest.fixture(scope="module")
def models(lipsync_weights):
    return MuseTalkModels.from_pretrained(lipsync_weights, local_files_only=True)


def test_loads_every_network_with_musetalk_shapes(models, lipsync_weights):
    unet = models.unet
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4
    assert unet.config.cross_attention_dim == 384 == models.audio.encoder.config.d_model
    assert unet.conv_in.weight.shape[1] == 8
    # Strict load: every tensor equals the file's (nothing left at random init).
    saved = torch.load(lipsync_weights / "MuseTalk" / "musetalkV15" / "unet.pth", weights_only=True)
    state = unet.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    # 256x256 crops -> 32x32 latents, as the real sd-vae-ft-mse.
    assert 2 ** (len(models.vae.config.block_out_channels) - 1) == 8
    assert set(models.components) == {"unet", "vae", "whisper", "face_parser"}
    assert models.device.type == "cpu" and models.dtype == torch.float32
    assert "sd-vae-ft-mse" in models.fingerprint and "79999_iter.pth" in models.fingerprint


def test_unet_loads_in_half_precision_without_a_float32_copy(lipsync_weights):
    unet = load_unet(lipsync_weights / "MuseTalk", torch.float16)
    assert {p.dtype for p in unet.parameters()} == {torch.float16}
    assert not any(p.is_meta for p in unet.parameters())


def test_legacy_torch_save_format_loads(lipsync_weights, tmp_path):
    folder = tmp_path / "MuseTalk"
    shutil.copytree(lipsync_weights / "MuseTalk", folder)
    path = folder / "musetalkV15" / "unet.pth"
    state = torch.load(path, weights_only=True)
    torch.save(state, path, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    unet = load_unet(folder)
    assert torch.equal(unet.conv_in.weight, state["conv_in.weight"])


def test_wrong_unet_file_is_a_clear_error(lipsync_weights, tmp_path):
    folder = tmp_path / "MuseTalk"
    shutil.copytree(lipsync_weights / "MuseTalk", folder)
    files = folder / "musetalkV15"
    config = json.loads((files / "musetalk.json").read_text())
    config["cross_attention_dim"] = 768  # e.g. an SD-1.5 UNet config
    (files / "musetalk.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit the UNet"):
        load_unet(folder)
    torch.save({"model": {"w": torch.zeros(1)}}, files / "unet.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_unet(folder)
    (files / "unet.pth").unlink()
    with pytest.raises(FileNotFoundError, match="download --lipsync"):
        load_unet(folder)


def test_missing_weights_name_the_download(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        MuseTalkModels.from_pretrained(tmp_path, local_files_only=True)
    message = str(error.value)
    assert weights.MUSETALK_REPO in message and "unet.pth" in message
