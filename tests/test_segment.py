"""SAM masks (`dynamictrl/segment.py`) on a tiny random SAM run through the real
`segment_anything` predictor, and the pose-driven masks on the tiny DWPose detector."""

import hashlib
import struct
import tracemalloc
import zlib
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from dynamictrl import segment, weights
from dynamictrl.manager import ModelManager
from dynamictrl.pose.types import FramePose
from dynamictrl.segment import MASK_MODES, MaskResult, Segmenter, apply_mask, clean_mask, to_rgb, variant_for
from dynamictrl.testing.onnx import DET_SIZE, DETECTOR_PROPOSALS, EXPECTED_PEOPLE
from dynamictrl.testing.sam import build_tiny_sam

WIDTH, HEIGHT = 480, 360


@pytest.fixture
def segmenter():
    return Segmenter(build_tiny_sam(), device="cpu")


def count_encoder_calls(seg: Segmenter) -> list:
    calls = []
    seg.model.image_encoder.register_forward_hook(lambda module, args, out: calls.append(1))
    return calls


def spy_predictor(seg: Segmenter) -> list[dict]:
    """Records the keyword arguments of every SamPredictor.predict call."""
    seen, real = [], seg.predictor.predict

    def predict(**kwargs):
        seen.append(kwargs)
        return real(**kwargs)

    seg.predictor.predict = predict
    return seen


def noise(seed=0, height=HEIGHT, width=WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# Predictor, cache, prompts


@pytest.mark.slow  # several SAM passes
def test_second_click_reuses_the_embedding(segmenter):
    calls = count_encoder_calls(segmenter)
    image = noise()
    segmenter.predict(image, points=[(100, 100, 1)])
    segmenter.predict(image, points=[(100, 100, 1), (300, 200, 0)])
    segmenter.predict(Image.fromarray(image), box=(10, 10, 200, 300))  # same pixels as PIL
    assert len(calls) == 1
    segmenter.predict(noise(1), points=[(5, 5, 1)])
    assert len(calls) == 2
    segmenter.predict(image, points=[(7, 7, 1)])  # back to the first: from the cache
    assert len(calls) == 2
    assert segmenter.stats.encoder_runs == 2 and segmenter.stats.cache_hits == 1 and segmenter.stats.decoder_runs == 5


@pytest.mark.slow  # several SAM passes
def test_cached_embedding_gives_the_same_mask_and_the_cache_is_lru():
    seg = Segmenter(build_tiny_sam(), device="cpu", cache_size=2)
    calls = count_encoder_calls(seg)
    images = [noise(i) for i in range(3)]
    first = seg.predict(images[0], points=[(50, 60, 1)])
    seg.predict(images[1], points=[(50, 60, 1)])
    again = seg.predict(images[0], points=[(50, 60, 1)])  # hit; now most recent
    assert len(calls) == 2
    np.testing.assert_array_equal(first.mask, again.mask)
    np.testing.assert_array_equal(first.logits, again.logits)
    seg.predict(images[2], points=[(50, 60, 1)])  # evicts images[1], the least recently used
    seg.predict(images[0], points=[(50, 60, 1)])
    assert len(calls) == 3
    seg.predict(images[1], points=[(50, 60, 1)])
    assert len(calls) == 4


def test_point_and_box_prompts(segmenter):
    seen = spy_predictor(segmenter)
    image = noise()
    one = segmenter.predict(image, points=[(100.5, 80, 1)])
    assert one.mask.shape == (HEIGHT, WIDTH) and one.mask.dtype == bool
    assert one.logits.shape == (256, 256) and one.logits.dtype == np.float32
    # one click is ambiguous: three candidates, the best predicted IoU is kept
    assert seen[-1]["multimask_output"] is True and len(one.scores) == 3
    assert one.score == pytest.approx(one.scores.max())
    np.testing.assert_allclose(seen[-1]["point_coords"], [[100.5, 80]])
    np.testing.assert_array_equal(seen[-1]["point_labels"], [1])

    two = segmenter.predict(image, points=[(100, 80, 1), (300, 200, 0)])
    assert seen[-1]["multimask_output"] is False and len(two.scores) == 1
    np.testing.assert_array_equal(seen[-1]["point_labels"], [1, 0])

    boxed = segmenter.predict(image, box=(10, 20, 200, 300))
    assert seen[-1]["point_coords"] is None and seen[-1]["multimask_output"] is False
    np.testing.assert_allclose(seen[-1]["box"], [10, 20, 200, 300])
    both = segmenter.predict(image, points=[(100, 100, 0)], box=[10, 20, 200, 300])
    assert seen[-1]["multimask_output"] is False
    for result in (boxed, both):
        assert result.mask.shape == (HEIGHT, WIDTH)
    forced = segmenter.predict(image, points=[(100, 80, 1)], multimask=False)
    assert len(forced.scores) == 1
    # the mask kept is the candidate with the best predicted IoU, thresholded at 0
    logits, scores, _ = segmenter.predictor.predict(
        point_coords=np.array([[100.5, 80]]), point_labels=np.array([1]), multimask_output=True, return_logits=True
    )
    np.testing.assert_array_equal(one.mask, logits[int(np.argmax(scores))] > 0)


def test_refinement_feeds_the_previous_logits(segmenter):
    seen = spy_predictor(segmenter)
    image = noise()
    first = segmenter.predict(image, points=[(100, 100, 1)])
    assert seen[-1]["mask_input"] is None
    second = segmenter.predict(image, points=[(100, 100, 1), (200, 150, 0)], previous=first)
    np.testing.assert_array_equal(seen[-1]["mask_input"], first.logits[None])
    # the decoder does see the mask: without it the result differs
    plain = segmenter.predict(image, points=[(100, 100, 1), (200, 150, 0)])
    assert not np.array_equal(second.logits, plain.logits)
    with pytest.raises(ValueError, match="another image"):
        segmenter.predict(noise(5), points=[(10, 10, 1)], previous=first)


@pytest.mark.parametrize(
    "points, box",
    [
        ([(481, 10, 1)], None),
        ([(-1, 10, 1)], None),
        ([(10, 360.5, 1)], None),
        ([(float("nan"), 10, 1)], None),
        ((), (0, 0, 500, 100)),
        ((), (100, 100, 50, 200)),  # x1 < x0
        ((), (-3, 0, 100, 100)),
    ],
)
def test_prompts_outside_the_image_are_refused(segmenter, points, box):
    with pytest.raises(ValueError, match="480x360"):
        segmenter.predict(noise(), points=points, box=box)


def test_bad_prompts(segmenter):
    with pytest.raises(ValueError, match="at least one point"):
        segmenter.predict(noise())
    with pytest.raises(ValueError, match="labels"):
        segmenter.predict(noise(), points=[(10, 10, 2)])
    with pytest.raises(ValueError, match=r"\(x, y, label\)"):
        segmenter.predict(noise(), points=[(10, 10)])
    # the edges themselves are inside
    segmenter.predict(noise(), points=[(0, 0, 1), (WIDTH, HEIGHT, 0)], box=(0, 0, WIDTH, HEIGHT))


def test_manager_moves_and_counts_the_segmenter():
    manager = ModelManager(device="cpu")
    manager.register("sam.tiny", lambda: Segmenter(build_tiny_sam(), device="cpu"))
    with manager.use("sam.tiny") as seg:
        result = seg.predict(noise(), points=[(10, 10, 1)])
    assert result.mask.shape == (HEIGHT, WIDTH)
    row = next(r for r in manager.status() if r["name"] == "sam.tiny")
    params = sum(p.numel() * p.element_size() for p in seg.model.parameters())
    assert row["loaded"] and manager.loaded_bytes() >= params  # counted through `components`


def test_embedding_follows_the_model_to_another_device(segmenter):
    """After the manager moves the model, the cached features go along (meta stands in
    for a GPU here: only where the tensor lives is checked)."""
    segmenter.embed(noise())
    segmenter.model.to("meta")
    segmenter._set_image(noise())
    assert segmenter.predictor.features.device.type == "meta"
    assert next(iter(segmenter._cache.values())).features.device.type == "cpu"


# ---------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture
def tiny_checkpoint(tmp_path, monkeypatch):
    """weights/sam/sam_vit_b_01ec64.pth holding the tiny model's state dict; the pinned
    size/digest of vit_b are swapped for the tiny file's."""
    path = tmp_path / "sam" / weights.SAM_CHECKPOINTS["vit_b"].filename
    path.parent.mkdir()
    state = build_tiny_sam().state_dict()
    torch.save(state, path)
    data = path.read_bytes()
    spec = weights.SamCheckpoint(path.name, len(data), hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", spec)
    return tmp_path, state


def test_checkpoint_is_resolved_under_weights_sam_and_loaded_without_pickle(tiny_checkpoint, monkeypatch):
    weights_dir, state = tiny_checkpoint
    loads, real_load = [], torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    seg = Segmenter(kind="vit_b", weights_dir=weights_dir, local_files_only=True, build=build_tiny_sam, device="cpu")
    assert loads == [{"map_location": "cpu", "weights_only": True}]
    loaded = seg.model.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    # the non-persistent normalisation buffers are the real ones, not left on meta
    torch.testing.assert_close(seg.model.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    assert seg.predict(noise(), points=[(10, 10, 1)]).mask.shape == (HEIGHT, WIDTH)
    # and the same through the manager
    manager = ModelManager(device="cpu")
    name = segment.register_segmenter(manager, "vit_b", weights_dir, local_files_only=True, build=build_tiny_sam)
    with manager.use(name) as managed:
        assert managed.predict(noise(), box=(0, 0, 50, 50)).mask.shape == (HEIGHT, WIDTH)


def test_checkpoint_of_another_architecture_or_with_code_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    state = build_tiny_sam().state_dict()
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit the SAM vit_b"):
        segment.load_sam("vit_b", checkpoint=path, build=build_tiny_sam)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": partial(print, "not a tensor")}, pickled)
    with pytest.raises(ValueError, match="plain tensors"):
        segment.load_sam("vit_b", checkpoint=pickled, build=build_tiny_sam)


def test_missing_checkpoint_offline_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsNotFoundError) as error:
        Segmenter(kind="vit_l", weights_dir=tmp_path)
    message = str(error.value)
    target = tmp_path / "sam" / "sam_vit_l_0b3195.pth"
    assert f"python -m dynamictrl download sam_vit_l --weights-dir {tmp_path}" in message
    assert f"https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth into {target.parent}" in message
    assert "1,249,524,607 bytes" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(weights.WeightsNotFoundError, match="offline"):
        weights.resolve_sam("vit_b", tmp_path, local_files_only=True)
    with pytest.raises(ValueError, match="vit_b, vit_l, vit_h"):
        weights.resolve_sam("vit_x", tmp_path)


def test_wrong_sized_checkpoint_is_not_used(tmp_path):
    target = weights.sam_checkpoint_path("vit_b", tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * 1000)
    with pytest.raises(weights.WeightsNotFoundError, match="1,000 bytes .* 375,042,383"):
        weights.resolve_sam("vit_b", tmp_path)


class FakeResponse:
    """Stands in for urlopen's response: serves `data` from the requested Range."""

    def __init__(self, data: bytes, request, honour_range=True):
        header = request.get_header("Range")
        start = int(header.split("=")[1].rstrip("-")) if header and honour_range else 0
        self.status = 206 if start else 200
        self.headers = {"Content-Length": str(len(data) - start)}
        self._rest = data[start:]

    def read(self, n):
        chunk, self._rest = self._rest[:n], self._rest[n:]
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_and_verifies(tmp_path, monkeypatch, honour_range):
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    spec = weights.SamCheckpoint("sam_vit_b_01ec64.pth", len(data), hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", spec)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    requests = []

    def fake_urlopen(request, timeout=None):
        requests.append((request.full_url, request.get_header("Range")))
        return FakeResponse(data, request, honour_range)

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    target = weights.sam_checkpoint_path("vit_b", tmp_path)
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(data[:1234])  # an interrupted earlier run
    assert weights.resolve_sam("vit_b", tmp_path) == target
    assert requests == [(spec.url, "bytes=1234-")]
    assert target.read_bytes() == data
    assert not target.with_name(target.name + ".part").exists()


def test_download_with_a_bad_digest_is_discarded(tmp_path, monkeypatch):
    data = b"x" * 3000
    spec = weights.SamCheckpoint("sam_vit_b_01ec64.pth", len(data), "0" * 64)
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", spec)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout=None: FakeResponse(data, request))
    with pytest.raises(weights.WeightsNotFoundError, match="SHA-256") as error:
        weights.resolve_sam("vit_b", tmp_path)
    assert "python -m dynamictrl download sam_vit_b" in str(error.value)
    folder = tmp_path / "sam"
    assert list(folder.iterdir()) == []  # neither the file nor a part of it is kept


# ---------------------------------------------------------------------------------------
# Masks from a pose


def red_image() -> np.ndarray:
    # the tiny detector finds its two people when the top-left pixel's red channel is on
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = 255
    return image


def expected_person_boxes() -> list[np.ndarray]:
    """The tiny detector's boxes in frame pixels, from its proposal table: the letterbox
    scales the frame by 640 / max(side) at the top-left, so frame = letterboxed / ratio."""
    ratio = min(DET_SIZE / HEIGHT, DET_SIZE / WIDTH)
    boxes = []
    for index in EXPECTED_PEOPLE:
        p = DETECTOR_PROPOSALS[index]
        box = np.array([p["cx"] - p["w"] / 2, p["cy"] - p["h"] / 2, p["cx"] + p["w"] / 2, p["cy"] + p["h"] / 2]) / ratio
        boxes.append(np.clip(box, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT]))
    return boxes


def rectangle(box, shape=(HEIGHT, WIDTH)) -> np.ndarray:
    """Pixels whose centres lie in the box, by brute force (independent of boxes_to_mask)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    x0, y0, x1, y1 = box
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def part_rectangles(person, margin=0.2) -> np.ndarray:
    """Face and hand exclusion, recomputed from the keypoints."""
    size = np.array([WIDTH, HEIGHT])
    out = np.zeros((HEIGHT, WIDTH), dtype=bool)
    head = [0, 14, 15, 16, 17]
    parts = [
        (
            np.vstack([person.face, person.body[head]]),
            np.concatenate([person.face_scores, person.body_scores[head]]),
            True,
        ),
        (person.left_hand, person.left_hand_scores, False),
        (person.right_hand, person.right_hand_scores, False),
    ]
    for points, scores, is_face in parts:
        pixels = points[scores > 0.3] * size
        if len(pixels) < 3:
            continue
        (x0, y0), (x1, y1) = pixels.min(0), pixels.max(0)
        if is_face:
            y0 -= 0.5 * (y1 - y0)
        pad = max(margin * max(x1 - x0, y1 - y0), 4.0)
        out |= rectangle((max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, WIDTH), min(y1 + pad, HEIGHT)))
    return out


@pytest.fixture
def red_pose(detector) -> FramePose:
    pose = detector(red_image())
    assert len(pose.people) == 2
    return pose


def test_person_mask_prompts_sam_with_each_person_box(segmenter, red_pose):
    seen = spy_predictor(segmenter)
    image = red_image()
    mask = segmenter.person_mask(image, red_pose)
    boxes = [call["box"] for call in seen]
    assert len(boxes) == 2
    for got, want in zip(boxes, expected_person_boxes()):
        np.testing.assert_allclose(got, want, atol=1e-3)
    assert all(call["point_coords"] is None and call["multimask_output"] is False for call in seen)
    union = np.zeros_like(mask)
    for want in expected_person_boxes():
        union |= segmenter.predict(image, box=want).mask
    np.testing.assert_array_equal(mask, union)
    np.testing.assert_array_equal(segmenter.background_mask(image, red_pose), ~union)
    assert segmenter.stats.encoder_runs == 1  # every person and mode reuses one embedding


def box_filling_segmenter(segmenter) -> Segmenter:
    """SAM replaced by 'the mask is the box', so the geometry can be checked exactly."""

    def predict(image, points=(), box=None, previous=None, multimask=None):
        mask = rectangle(box, np.asarray(image).shape[:2])
        return MaskResult(mask, 1.0, np.zeros((256, 256), np.float32), "", np.ones(1, np.float32))

    segmenter.predict = predict
    return segmenter


def with_compact_parts(pose: FramePose) -> FramePose:
    """The detected pose with face and hands gathered where they would be on a person
    (the tiny pose model scatters them over the whole crop): A has a face and two hands,
    one of them with too few confident points; B faces away (no face), one hand."""
    pose = pose.copy()
    size = np.array([WIDTH, HEIGHT])
    rng = np.random.default_rng(0)

    def cluster(centre, spread, count):
        return ((np.array(centre) + rng.uniform(-spread, spread, (count, 2))) / size).astype(np.float32)

    a, b = pose.people
    a.face, a.face_scores = cluster((150, 95), 12, 68), np.full(68, 0.9, np.float32)
    a.body_scores[[0, 14, 15, 16, 17]] = 0.0  # head points from the face landmarks only
    a.left_hand, a.left_hand_scores = cluster((112, 200), 6, 21), np.full(21, 0.8, np.float32)
    a.right_hand = cluster((188, 205), 6, 21)
    a.right_hand_scores = np.where(np.arange(21) < 2, 0.9, 0.1).astype(np.float32)  # 2 visible: no box
    b.face_scores = np.zeros(68, np.float32)
    b.body_scores[[0, 14, 15, 16, 17]] = 0.0
    b.left_hand, b.left_hand_scores = cluster((320, 215), 5, 21), np.full(21, 0.7, np.float32)
    b.right_hand_scores = np.zeros(21, np.float32)
    return pose


def test_person_background_and_clothing_geometry(segmenter, red_pose):
    seg = box_filling_segmenter(segmenter)
    image = red_image()
    red_pose = with_compact_parts(red_pose)
    people = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for box in expected_person_boxes():
        people |= rectangle(box)
    np.testing.assert_array_equal(seg.person_mask(image, red_pose), people)
    background = seg.background_mask(image, red_pose)
    np.testing.assert_array_equal(background, ~people)
    clothing = seg.clothing_mask(image, red_pose)
    excluded = part_rectangles(red_pose.people[0]) | part_rectangles(red_pose.people[1])
    # the check below is not vacuous: two small boxes for A, one for B
    assert 0.01 < (excluded & people).mean() / people.mean() < 0.2
    assert ndimage.label(excluded)[1] == 3
    np.testing.assert_array_equal(clothing, people & ~excluded)
    assert not (clothing & excluded).any()
    np.testing.assert_array_equal(seg.mask_for("background", image, red_pose), background)
    np.testing.assert_array_equal(seg.mask_for("clothing", image, red_pose), clothing)


def test_choosing_people(segmenter, red_pose):
    seg = box_filling_segmenter(segmenter)
    first, second = (rectangle(b) for b in expected_person_boxes())
    # person A (120x300 letterboxed) is larger than B (100x260)
    np.testing.assert_array_equal(seg.person_mask(red_image(), red_pose, people="largest"), first)
    np.testing.assert_array_equal(seg.person_mask(red_image(), red_pose, people=1), second)
    with pytest.raises(ValueError, match="has 2"):
        seg.person_mask(red_image(), red_pose, people=2)
    with pytest.raises(ValueError, match="'all', 'largest'"):
        seg.person_mask(red_image(), red_pose, people="tallest")


def test_no_person_or_a_pose_of_another_image(segmenter, detector, red_pose):
    black = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    nobody = detector(black)
    assert nobody.people == []
    with pytest.raises(ValueError, match="No person"):
        segmenter.background_mask(black, nobody)
    with pytest.raises(ValueError, match="480x360 image but this one is 360x480"):
        segmenter.person_mask(np.zeros((WIDTH, HEIGHT, 3), np.uint8), red_pose)
    # a resized copy of the same picture is fine: coordinates are normalised
    seg = box_filling_segmenter(segmenter)
    assert seg.person_mask(np.zeros((HEIGHT // 2, WIDTH // 2, 3), np.uint8), red_pose).shape == (
        HEIGHT // 2,
        WIDTH // 2,
    )


def test_mask_modes_map_to_the_variants():
    assert MASK_MODES == ("background", "clothing")
    assert variant_for("background") == "mask_background"
    assert variant_for("clothing") == "mask_clothing"
    assert all(variant_for(mode) in weights.VARIANTS for mode in MASK_MODES)
    with pytest.raises(ValueError, match="background, clothing"):
        variant_for("face")


# ---------------------------------------------------------------------------------------
# clean_mask and apply_mask


def test_clean_mask_fills_small_holes_only():
    mask = np.zeros((100, 120), dtype=bool)
    mask[10:90, 10:110] = True
    mask[20:23, 20:23] = False  # 9-pixel hole
    mask[40:60, 40:60] = False  # 400-pixel hole
    mask[0:5, 60:63] = False  # outside the object, touching the border: not a hole
    mask[50, 100] = False  # one pixel
    cleaned = clean_mask(mask, fill_holes_below=100)
    expected = mask.copy()
    expected[20:23, 20:23] = True
    expected[50, 100] = True
    np.testing.assert_array_equal(cleaned, expected)
    np.testing.assert_array_equal(clean_mask(mask, fill_holes_below=401), ndimage.binary_fill_holes(mask))
    np.testing.assert_array_equal(clean_mask(mask, fill_holes_below=0), mask)
    # default: 0.1% of the image = 12 pixels: the 9- and 1-pixel holes go, the big one stays
    np.testing.assert_array_equal(clean_mask(mask), expected)
    assert not mask[20, 20]  # the input is not modified


def test_clean_mask_removes_islands():
    mask = np.zeros((50, 50), dtype=bool)
    mask[5:30, 5:30] = True
    mask[40:42, 40:42] = True  # 4-pixel speck
    cleaned = clean_mask(mask, fill_holes_below=0, remove_islands_below=10)
    assert cleaned[5:30, 5:30].all() and not cleaned[40:42, 40:42].any()


@pytest.mark.parametrize("radius", [1, 3, 7])
def test_clean_mask_dilates_and_erodes_by_euclidean_distance(radius):
    mask = np.zeros((64, 80), dtype=bool)
    mask[32, 40] = True
    mask[10:20, 5:30] = True
    distance_out = ndimage.distance_transform_edt(~mask)  # distance to the mask
    dilated = clean_mask(mask, fill_holes_below=0, dilate_px=radius)
    np.testing.assert_array_equal(dilated, distance_out <= radius)
    # erosion: a pixel stays if no non-mask pixel lies within the radius
    block = np.zeros((64, 80), dtype=bool)
    block[8:50, 10:70] = True
    distance_in = ndimage.distance_transform_edt(block)  # distance to the nearest outside pixel
    eroded = clean_mask(block, fill_holes_below=0, dilate_px=-radius)
    np.testing.assert_array_equal(eroded, distance_in > radius)


def test_apply_mask_blacks_out_the_region():
    image = noise()
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[100:200, 50:300] = True
    out = apply_mask(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[mask] == 0).all()
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert image[mask].any()  # the input is untouched
    np.testing.assert_array_equal(apply_mask(Image.fromarray(image), mask.astype(np.uint8) * 255), out)
    with pytest.raises(ValueError, match="mask is 480x300 but the image is 480x360"):
        apply_mask(image, mask[:300])


# ---------------------------------------------------------------------------------------
# Image input


def png_header_only(path, width, height):
    """A PNG that declares width x height but holds no pixel data: opening it reads only
    the header, so the size check can be exercised without any allocation."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_tiny_and_huge_images_are_refused_without_allocating(tmp_path, monkeypatch, segmenter):
    for tiny in (np.zeros((1, 1, 3), np.uint8), Image.new("RGB", (1, 1)), np.zeros((15, 100), np.uint8)):
        with pytest.raises(ValueError, match=r"is (1x1|100x15) \(width x height\)"):
            to_rgb(tiny)
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))  # a view: no 1.2 GB behind it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # let PIL open the header-only file lazily
    lazy = Image.open(png_header_only(tmp_path / "huge.png", 20000, 20000))
    tracemalloc.start()
    try:
        for image in (huge, lazy, tmp_path / "huge.png"):
            with pytest.raises(ValueError, match="20000x20000"):
                segmenter.predict(image, points=[(1, 1, 1)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    with pytest.raises(ValueError, match="8193x16"):
        to_rgb(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (16, 8193, 3)))


def test_image_modes_are_converted_to_rgb(segmenter):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    # RGBA: composited onto black, identical for numpy and PIL input
    composite = to_rgb(rgba)
    np.testing.assert_array_equal(composite, to_rgb(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(composite, np.round(rgb * (alpha / 255.0)).astype(np.uint8))
    # CMYK: PIL's conversion
    cmyk = Image.fromarray(rgb).convert("CMYK")
    np.testing.assert_array_equal(to_rgb(cmyk), np.asarray(cmyk.convert("RGB")))
    # 16-bit greyscale: scaled, not clipped
    grey16 = (rng.integers(0, 65536, (40, 50))).astype(np.uint16)
    expected = np.repeat(np.round(grey16 / 65535 * 255).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(to_rgb(grey16), expected)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(grey16)), expected)  # PIL mode I;16
    # greyscale and palette
    grey = rgb[..., 0]
    np.testing.assert_array_equal(to_rgb(Image.fromarray(grey)), np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb(grey[..., None]), np.repeat(grey[..., None], 3, axis=2))
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(to_rgb(palette), np.asarray(palette.convert("RGB")))
    # floats in [0, 1]; anything else is refused with the fix
    np.testing.assert_array_equal(to_rgb(rgb / 255.0), rgb)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_rgb(np.zeros((40, 50, 5), np.uint8))
    with pytest.raises(ValueError, match="PIL image, a numpy array or a path"):
        to_rgb([[0, 1], [2, 3]])
    # converted images hit the same cached embedding as their RGB form
    calls = count_encoder_calls(segmenter)
    segmenter.predict(rgba, points=[(5, 5, 1)])
    segmenter.predict(Image.fromarray(composite), points=[(6, 6, 1)])
    assert len(calls) == 1
