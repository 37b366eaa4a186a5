"""Loading MuseTalk 1.5's four networks from their official files, unchanged.

    weights/MuseTalk/musetalkV15/{unet.pth, musetalk.json}   TMElyralab/MuseTalk
    weights/sd-vae-ft-mse/{config.json, diffusion_pytorch_model.safetensors}
    weights/whisper-tiny/{config.json, model.safetensors, preprocessor_config.json}
    weights/face-parsing-bisenet/79999_iter.pth             (BiSeNet face parsing)

Each folder is found or fetched by `dynamictrl.weights`; pickled files are read with
`torch.load(weights_only=True)`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .. import weights
from .audio import WhisperAudioEncoder
from .face_parsing import FaceParser

UNET_FILE, UNET_CONFIG = weights.MUSETALK_FILES


def _load_state_dict(path: Path) -> dict:
    """A plain tensor dict from a `torch.save` file, memory-mapped where the format allows,
    so loading does not hold a second copy of the weights."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors (MuseTalk's unet.pth is one); re-download it.")
    return state


def load_unet(folder: str | Path, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """MuseTalk's UNet from its repo folder (`weights/MuseTalk`): diffusers'
    `UNet2DConditionModel` built from `musetalkV15/musetalk.json`, with `musetalkV15/unet.pth`
    loaded strictly (its keys already use diffusers' names)."""
    from accelerate import init_empty_weights

    folder = Path(folder)
    config_path, weights_path = folder / UNET_CONFIG, folder / UNET_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run:  python -m dynamictrl download --lipsync")
    config = json.loads(config_path.read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    state = {name: tensor.to(dtype) for name, tensor in _load_state_dict(weights_path).items()}
    try:
        unet.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{weights_path} does not fit the UNet of {config_path.name}: {str(error)[:500]}") from error
    return unet.eval().requires_grad_(False)


def load_vae(folder: str | Path, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype).eval().requires_grad_(False)


def _fingerprint(folders: dict[str, Path], dtype: torch.dtype) -> str:
    """Names, sizes and times of the weight files that shape an avatar (VAE, face parser)."""
    parts = [str(dtype)]
    for repo in (weights.SD_VAE_REPO, weights.FACE_PARSING_REPO):
        for name in weights.LIPSYNC_WEIGHTS[repo]:
            stat = (folders[repo] / name).stat()
            parts.append(f"{folders[repo] / name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


@dataclass
class MuseTalkModels:
    """The four networks of one lip-sync run, moved together by the model manager."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    audio: WhisperAudioEncoder
    parser: FaceParser
    fingerprint: str = ""  # which weight files, in which dtype: part of the avatar cache key

    @classmethod
    def from_pretrained(
        cls, weights_dir: str | Path | None = None, dtype: torch.dtype = torch.float32, local_files_only: bool = False
    ) -> "MuseTalkModels":
        folders = {
            repo: weights.resolve_files(repo, files, weights_dir, local_files_only)
            for repo, files in weights.LIPSYNC_WEIGHTS.items()
        }
        unet = load_unet(folders[weights.MUSETALK_REPO], dtype)
        vae = load_vae(folders[weights.SD_VAE_REPO], dtype)
        audio = WhisperAudioEncoder.from_pretrained(folders[weights.WHISPER_REPO], dtype=dtype)
        parser = FaceParser.from_file(folders[weights.FACE_PARSING_REPO] / weights.FACE_PARSING_FILES[0], dtype=dtype)
        return cls(unet, vae, audio, parser, fingerprint=_fingerprint(folders, dtype))

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        """The torch modules, for the model manager's placement and memory accounting."""
        return {"unet": self.unet, "vae": self.vae, "whisper": self.audio.encoder, "face_parser": self.parser.net}

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device) -> "MuseTalkModels":
        self.unet.to(device)
        self.vae.to(device)
        self.audio.to(device)
        self.parser.to(device)
        return self
