import numpy as np
import pytest
from PIL import Image

from dynamictrl.outputs import NewFiles, save_image_atomic, write_atomic


def test_write_atomic_leaves_the_old_file_and_no_partial_when_writing_fails(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")

    def fail_halfway(partial):
        partial.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, fail_halfway)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    write_atomic(path, lambda partial: partial.write_text("new"))
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_save_image_atomic_writes_the_format_of_the_suffix(tmp_path):
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    save_image_atomic(tmp_path / "a.png", pixels)
    with Image.open(tmp_path / "a.png") as image:
        assert image.format == "PNG"
        np.testing.assert_array_equal(np.asarray(image), pixels)
    with pytest.raises(ValueError, match=r"unknown image extension '\.xyz'; use \.png"):
        save_image_atomic(tmp_path / "a.xyz", pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_new_files_removes_only_what_the_failed_block_created(tmp_path):
    earlier, new, absent = tmp_path / "earlier.mp4", tmp_path / "new.json", tmp_path / "never.png"
    earlier.write_text("an earlier run's result")
    with pytest.raises(RuntimeError):
        with NewFiles(earlier, new, absent, None):
            earlier.write_text("overwritten")
            new.write_text("{}")
            raise RuntimeError("the next file failed")
    assert earlier.exists() and not new.exists() and not absent.exists()
    with NewFiles(new):
        new.write_text("{}")
    assert new.exists()  # kept when the block succeeds
