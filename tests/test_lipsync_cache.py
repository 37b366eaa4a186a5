import numpy as np
import pytest
import torch

from dynamictrl.lipsync.cache import AvatarCache, avatar_key
from dynamictrl.lipsync.face import FaceBox
from dynamictrl.lipsync.pipeline import Avatar
from dynamictrl.lipsync.settings import LipSyncSettings


def make_avatar() -> Avatar:
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 50, 3), dtype=np.uint8)
    boxes = [FaceBox(5, 6, 25, 30), None, FaceBox(7, 6, 27, 31)]
    masks = [np.full((24, 20), 200, np.uint8), None, np.arange(500, dtype=np.uint8).reshape(25, 20)]
    return Avatar(
        frames, 25.0, boxes, torch.randn(2, 8, 32, 32), [0, None, 1], masks, [(-4, 0, 16, 24), None, (-3, 0, 17, 25)]
    )


def test_key_depends_on_video_settings_and_models():
    key = avatar_key("abc", LipSyncSettings(), "vae:1")
    assert key == avatar_key("abc", LipSyncSettings(batch_size=3), "vae:1")  # batch size changes no result
    assert key != avatar_key("abd", LipSyncSettings(), "vae:1")
    assert key != avatar_key("abc", LipSyncSettings(bbox_shift=4), "vae:1")
    assert key != avatar_key("abc", LipSyncSettings(), "vae:2")


def test_memory_hit_and_eviction():
    cache = AvatarCache(None, memory_items=1)
    first, second = make_avatar(), make_avatar()
    cache.put("a", first)
    assert cache.get("a", read_frames=None) is first and cache.hits["memory"] == 1
    cache.put("b", second)
    assert cache.get("a", read_frames=None) is None and cache.misses == 1  # evicted, no disk


def test_disk_round_trip_is_exact(tmp_path):
    avatar = make_avatar()
    AvatarCache(tmp_path).put("k", avatar)
    assert not list(tmp_path.glob("*.partial-*"))
    fresh = AvatarCache(tmp_path)  # a new process: nothing in memory
    loaded = fresh.get("k", read_frames=lambda: (avatar.frames, 25.0))
    assert fresh.hits["disk"] == 1
    assert loaded.boxes == avatar.boxes and loaded.crop_boxes == avatar.crop_boxes
    assert loaded.latent_rows == avatar.latent_rows and loaded.fps == 25.0
    assert torch.equal(loaded.latents, avatar.latents)
    assert loaded.masks[1] is None
    for got, want in zip(loaded.masks[::2], avatar.masks[::2]):
        assert np.array_equal(got, want)
    assert fresh.get("k", read_frames=None) is loaded  # now in memory


def test_disk_entry_for_a_differently_decoded_video_is_ignored(tmp_path):
    avatar = make_avatar()
    AvatarCache(tmp_path).put("k", avatar)
    cache = AvatarCache(tmp_path)
    assert cache.get("k", read_frames=lambda: (avatar.frames[:2], 25.0)) is None
    assert cache.misses == 1


@pytest.mark.parametrize("broken", ["meta.json", "avatar.safetensors"])
def test_unreadable_entry_is_a_miss_not_a_crash(tmp_path, broken):
    avatar = make_avatar()
    AvatarCache(tmp_path).put("k", avatar)
    (tmp_path / "k" / broken).write_bytes(b"\x00garbage")
    cache = AvatarCache(tmp_path)
    assert cache.get("k", read_frames=lambda: (avatar.frames, 25.0)) is None
