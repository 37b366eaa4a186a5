"""Pasting the generated face back (MuseTalk's blending): crop boxes, masks and the alpha paste."""

import cv2
import numpy as np
import pytest
from PIL import Image

from dynamictrl.lipsync.blending import (
    FEATHER_REALTIME,
    blend_mask,
    expanded_crop_box,
    face_large,
    feather_size,
    paste_face,
)

SKIN = np.ones((512, 512), dtype=np.uint8)  # a parse that is skin everywhere


def random_frame(height=240, width=320, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_expanded_crop_box():
    # w=100, h=200: centre (150, 150), s = 200//2 * 1.5 = 150
    assert expanded_crop_box((100, 50, 200, 250)) == (0, 0, 300, 300)
    # odd sizes floor first: w=101 -> 101//2 = 50 -> s = 75; centre (60, 55)
    assert expanded_crop_box((10, 20, 111, 90)) == (-15, -20, 135, 130)
    assert expanded_crop_box((10, 20, 111, 90), expand=1.2) == (0, -5, 120, 115)


@pytest.mark.parametrize(
    "side, fraction, size",
    [(300, 0.05, 15), (344, 0.05, 17), (400, 0.05, 21), (300, FEATHER_REALTIME, 31), (100, 0.05, 5), (300, 0.0, 1)],
)
def test_feather_size(side, fraction, size):
    assert feather_size(side, fraction) == size


def test_feather_size_defaults_to_offline():
    assert feather_size(344) == 17


def test_face_large_pads_black_outside_the_frame():
    frame = random_frame(100, 120)
    image, crop_box = face_large(frame, (0, 0, 40, 40))
    assert crop_box == (-10, -10, 50, 50)
    crop = np.asarray(image)
    assert image.mode == "RGB" and crop.shape == (60, 60, 3)
    assert not crop[:10].any() and not crop[:, :10].any()
    assert np.array_equal(crop[10:, 10:], frame[:50, :50])


def test_face_large_rejects_non_rgb_frames():
    with pytest.raises(ValueError, match="RGB uint8"):
        face_large(np.zeros((50, 50), dtype=np.uint8), (10, 10, 30, 30))
    with pytest.raises(ValueError, match="RGB uint8"):
        face_large(np.zeros((50, 50, 3), dtype=np.float32), (10, 10, 30, 30))


def test_blend_mask_unfeathered_is_the_lower_half_of_the_box():
    box = (100, 40, 200, 200)  # w=100, h=160: centre (150, 120), s=120
    crop_box = expanded_crop_box(box)
    assert crop_box == (30, 0, 270, 240)
    mask = blend_mask(SKIN, box, crop_box, mode="raw", feather=0.0)
    assert mask.shape == (240, 240) and mask.dtype == np.uint8
    expected = np.zeros((240, 240), dtype=np.uint8)
    expected[120:200, 70:170] = 255  # rows from s=120 (box centre) to y2-ys, columns x1-xs..x2-xs
    assert np.array_equal(mask, expected)


def test_blend_mask_uses_the_requested_region_mode():
    neck_only = np.full((512, 512), 14, dtype=np.uint8)
    box = (100, 40, 200, 200)
    crop_box = expanded_crop_box(box)
    assert not blend_mask(neck_only, box, crop_box, mode="raw").any()
    assert blend_mask(neck_only, box, crop_box, mode="neck")[150, 120] == 255


def test_blend_mask_resizes_the_parse_to_the_crop():
    """The left half of the parse is skin: after resizing to the 240 px crop only columns
    below ~120 survive (bicubic ringing aside)."""
    half = np.zeros((512, 512), dtype=np.uint8)
    half[:, :256] = 1
    box = (100, 40, 200, 200)
    mask = blend_mask(half, box, expanded_crop_box(box), mode="raw", feather=0.0)
    assert (mask[150, 70:118] == 255).all() and not mask[150, 122:170].any()
    # PIL's default for mode L (bicubic), as upstream's `resize(image.size)`; bilinear differs at the edge.
    region = Image.fromarray(np.where(half == 1, 255, 0).astype(np.uint8))
    bicubic = np.asarray(region.resize((240, 240), Image.Resampling.BICUBIC))
    bilinear = np.asarray(region.resize((240, 240), Image.Resampling.BILINEAR))
    assert np.array_equal(mask[150, 70:170], bicubic[150, 70:170])
    assert not np.array_equal(mask[150, 70:170], bilinear[150, 70:170])


def test_blend_mask_feathers_the_edges():
    box = (100, 40, 200, 200)
    mask = blend_mask(SKIN, box, expanded_crop_box(box), mode="raw")  # k = feather_size(240) = 13
    assert feather_size(240) == 13
    assert mask[160, 120] == 255  # far from every edge
    assert 100 < mask[120, 120] < 160  # on the centre line: about half
    assert 0 < mask[117, 120] < mask[120, 120] < mask[123, 120] < 255
    assert not mask[:114].any() and not mask[206:].any() and not mask[:, :64].any() and not mask[:, 176:].any()


def test_paste_face_round_trip():
    frame = random_frame(seed=1)
    original = frame.copy()
    face = random_frame(256, 256, seed=2)
    box = (100, 40, 200, 200)
    crop_box = expanded_crop_box(box)
    xs, ys, xe, ye = crop_box
    mask = np.zeros((ye - ys, xe - xs), dtype=np.uint8)
    mask[100:180, 50:200] = 255  # straddles the box's left and right edges
    mask[60:80, 80:120] = 128
    out = paste_face(frame, face, box, mask, crop_box)

    assert np.array_equal(frame, original)
    assert out.shape == frame.shape and out.dtype == np.uint8 and out is not frame
    alpha = np.zeros(frame.shape[:2], dtype=np.uint8)
    alpha[ys:ye, xs:xe] = mask
    assert np.array_equal(out[alpha == 0], frame[alpha == 0])

    resized = cv2.resize(face, (100, 160))
    inside = np.zeros_like(alpha, dtype=bool)
    inside[40:200, 100:200] = True
    full = (alpha == 255) & inside
    assert full.sum() == 80 * 100
    assert np.array_equal(out[40:200, 100:200][full[40:200, 100:200]], resized[full[40:200, 100:200]])
    # Outside the box the large crop is the frame itself, so even mask 255 keeps the frame.
    assert np.array_equal(out[(alpha == 255) & ~inside], frame[(alpha == 255) & ~inside])
    # Half alpha lands between the two sources.
    half = alpha == 128
    low = np.minimum(frame, np.pad(resized, ((40, 40), (100, 120), (0, 0))))[half].astype(int)
    high = np.maximum(frame, np.pad(resized, ((40, 40), (100, 120), (0, 0))))[half].astype(int)
    blended = out[half].astype(int)
    assert ((low <= blended) & (blended <= high)).all() and not np.array_equal(blended, frame[half])


@pytest.mark.parametrize("box", [(0, 0, 50, 60), (270, 180, 320, 240)])
def test_paste_face_at_the_frame_edge(box):
    frame = random_frame(seed=3)
    face = random_frame(256, 256, seed=4)
    crop_box = expanded_crop_box(box)
    xs, ys, xe, ye = crop_box
    assert xs < 0 or xe > frame.shape[1]
    out = paste_face(frame, face, box, np.full((ye - ys, xe - xs), 255, dtype=np.uint8), crop_box)
    x1, y1, x2, y2 = box
    expected = frame.copy()
    expected[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))
    assert np.array_equal(out, expected)  # the black padding never reaches the frame


def test_full_blend_keeps_the_upper_face_and_frame():
    frame = random_frame(seed=5)
    face = random_frame(256, 256, seed=6)
    box = (100, 40, 200, 200)
    image, crop_box = face_large(frame, box)
    assert image.size == (240, 240)
    mask = blend_mask(SKIN, box, crop_box, mode="jaw")
    out = paste_face(frame, face, box, mask, crop_box)
    resized = cv2.resize(face, (100, 160))
    assert np.array_equal(out[:110], frame[:110])  # above the centre line minus the feather radius
    assert np.array_equal(out[130:190, 110:190], resized[90:150, 10:90])


def test_paste_face_checks_the_mask_size():
    box = (100, 40, 200, 200)
    with pytest.raises(ValueError, match="mask has shape"):
        paste_face(random_frame(), random_frame(256, 256), box, np.zeros((100, 100), np.uint8), expanded_crop_box(box))


def upstream_paste(frame, face, box, mask, crop_box):
    """MuseTalk's get_image step 7 as written upstream: the whole frame through PIL."""
    import cv2
    from PIL import Image

    x1, y1, x2, y2 = box
    xs, ys, _, _ = crop_box
    body = Image.fromarray(frame)
    large = body.crop(crop_box)
    large.paste(Image.fromarray(cv2.resize(face, (x2 - x1, y2 - y1))), (x1 - xs, y1 - ys))
    body.paste(large, crop_box[:2], Image.fromarray(mask))
    return np.array(body)


@pytest.mark.parametrize("box", [(40, 30, 90, 95), (0, 0, 50, 60), (100, 70, 160, 128), (2, 60, 70, 128)])
def test_paste_equals_the_whole_frame_upstream_paste(box):
    rng = np.random.default_rng(sum(box))
    frame = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    crop_box = expanded_crop_box(box)
    mask = rng.integers(0, 256, (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0]), dtype=np.uint8)
    assert np.array_equal(
        paste_face(frame, face, box, mask, crop_box), upstream_paste(frame, face, box, mask, crop_box)
    )
