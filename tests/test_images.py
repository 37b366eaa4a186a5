import numpy as np
import pytest
from PIL import Image

from dynamictrl.images import to_rgb, to_rgb_image


def test_exif_rotation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=100)
    upright = to_rgb(path)
    assert upright.shape == (40, 20, 3)
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50


def test_one_function_for_paths_arrays_and_pil(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(to_rgb(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(to_rgb(rgb), rgb)
    assert to_rgb_image(rgb).mode == "RGB"


@pytest.mark.parametrize("size", [(1, 1), (20000, 20000)])
def test_absurd_sizes_are_refused_before_decoding(tmp_path, size):
    # A PNG header claiming the size is enough: the pixels are never decoded.
    path = tmp_path / "claim.png"
    Image.new("1", size).save(path)
    with pytest.raises(ValueError, match="8192"):
        to_rgb(path)
