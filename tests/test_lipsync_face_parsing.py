"""BiSeNet face parsing: checkpoint layout, strict loading, parsing, and MuseTalk's region masks."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from dynamictrl.lipsync.face_parsing import (
    BiSeNet,
    FaceParser,
    cheek_mask,
    jaw_dilation_kernel,
    region_mask,
)
from dynamictrl.testing.face_parser import save_tiny_face_parser


@pytest.fixture(scope="module")
def parser_file(tmp_path_factory):
    return save_tiny_face_parser(tmp_path_factory.mktemp("face_parsing"))


@pytest.fixture(scope="module")
def parser(parser_file):
    return FaceParser.from_file(parser_file)


@pytest.fixture(scope="module")
def photos():
    """Three images of different sizes with smooth structure (so the parse is not uniform)."""
    rng = np.random.default_rng(7)
    images = []
    for height, width in ((300, 300), (344, 280), (128, 200)):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        images.append(Image.fromarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)))
    return images


# ---------------------------------------------------------------------------- checkpoint layout
def test_state_dict_has_the_official_79999_iter_layout():
    """Derived from face-parsing.PyTorch model.py/resnet.py. A ConvBNReLU is conv.weight + 5 BN
    tensors (weight, bias, running_mean, running_var, num_batches_tracked) = 6.
      cp.resnet: conv1 + bn1 = 6; 8 BasicBlocks x 12 (conv1, bn1, conv2, bn2) = 96; the first
        block of layers 2-4 adds downsample.0 + downsample.1 = 3 x 6 = 18       -> 120
      cp.arm16/arm32: ConvBNReLU + conv_atten + bn_atten = 12, twice             ->  24
      cp.conv_head32, conv_head16, conv_avg: 3 ConvBNReLU                        ->  18
      ffm: convblk (ConvBNReLU) + conv1 + conv2                                  ->   8
      conv_out, conv_out16, conv_out32: ConvBNReLU + conv_out, three times      ->  21
                                                                          total    191
    """
    state = BiSeNet().state_dict()
    assert len(state) == 191
    expected_shapes = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer4.1.bn2.running_var": (512,),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv.conv.weight": (128, 512, 3, 3),
        "cp.arm16.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.weight": (128,),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "cp.conv_head32.conv.weight": (128, 128, 3, 3),
        "cp.conv_head16.bn.num_batches_tracked": (),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),  # cat of 128 backbone + 128 context channels
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3),
        "conv_out.conv_out.weight": (19, 256, 1, 1),  # the main head's mid width is 256
        "conv_out16.conv.conv.weight": (64, 128, 3, 3),
        "conv_out16.conv_out.weight": (19, 64, 1, 1),
        "conv_out32.conv_out.weight": (19, 64, 1, 1),
    }
    assert {key: tuple(state[key].shape) for key in expected_shapes} == expected_shapes
    assert not [key for key in state if key.endswith(".bias") and "conv" in key.split(".")[-2]]
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == 13_313_088


def test_backbone_keys_are_torchvision_resnet18_without_fc():
    backbone = {
        k.removeprefix("cp.resnet."): v.shape for k, v in BiSeNet().state_dict().items() if k.startswith("cp.resnet.")
    }
    reference = {k: v.shape for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    assert backbone == reference


def test_forward_is_the_main_head_upsampled_with_align_corners():
    torch.manual_seed(0)
    net = BiSeNet().eval()
    low_res = {}
    net.conv_out.register_forward_hook(lambda module, args, out: low_res.setdefault("logits", out))
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 19, 96, 64)
    assert low_res["logits"].shape == (2, 19, 12, 8)
    assert torch.equal(out, F.interpolate(low_res["logits"], (96, 64), mode="bilinear", align_corners=True))
    assert not torch.allclose(out, F.interpolate(low_res["logits"], (96, 64), mode="bilinear", align_corners=False))


def test_auxiliary_heads_do_not_change_the_output():
    torch.manual_seed(0)
    net = BiSeNet().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        net.conv_out16.conv_out.weight.zero_()
        net.conv_out32.conv_out.weight.zero_()
        assert torch.equal(net(x), before)
        net.conv_out.conv_out.weight.mul_(-1)
        assert not torch.allclose(net(x), before)


# ---------------------------------------------------------------------------- loading
def test_from_file_loads_strictly(parser_file, parser):
    saved = torch.load(parser_file, weights_only=True)
    loaded = parser.net.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert not parser.net.training
    assert parser.device == torch.device("cpu") and parser.dtype == torch.float32
    assert parser.to("cpu") is parser
    assert sum(p.numel() for p in parser.parameters()) > 13_000_000


def test_batch_norm_counters_may_be_absent(tmp_path, parser_file):
    """Checkpoints saved before torch 0.4.1 have no num_batches_tracked; torch accepts them
    (31 batch norms: 191 - 31 = 160 tensors). Anything else missing is still an error."""
    state = torch.load(parser_file, weights_only=True)
    old_style = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(old_style) == 160
    path = tmp_path / "old.pth"
    torch.save(old_style, path)
    loaded = FaceParser.from_file(path).net.state_dict()
    assert torch.equal(loaded["conv_out.conv_out.weight"], state["conv_out.conv_out.weight"])
    del old_style["cp.resnet.bn1.running_var"]
    torch.save(old_style, path)
    with pytest.raises(ValueError, match=r"1 missing \(cp\.resnet\.bn1\.running_var\)"):
        FaceParser.from_file(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="79999_iter.pth"):
        FaceParser.from_file(tmp_path / "79999_iter.pth")


def test_unrelated_state_dict_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3), "cp.resnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError) as error:
        FaceParser.from_file(path)
    message = str(error.value)
    assert "other.pth" in message and "159 missing" in message and "1 unexpected (encoder.weight)" in message
    assert "cp.resnet.bn1.weight" in message


def test_wrong_shape_is_reported(tmp_path, parser_file):
    state = torch.load(parser_file, weights_only=True)
    state["conv_out.conv_out.weight"] = torch.zeros(19, 64, 1, 1)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    expected = r"wrong shape \(conv_out\.conv_out\.weight \(19, 64, 1, 1\) != \(19, 256, 1, 1\)\)"
    with pytest.raises(ValueError, match=expected):
        FaceParser.from_file(path)


@pytest.mark.parametrize("content", [[torch.zeros(2)], {"state_dict": {"a": torch.zeros(1)}}, "weights"])
def test_non_state_dict_is_rejected(tmp_path, content):
    path = tmp_path / "wrapped.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match="wrapped.pth is not a plain state dict"):
        FaceParser.from_file(path)


def test_garbage_file_is_rejected(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(ValueError, match="broken.pth is not a readable torch checkpoint"):
        FaceParser.from_file(path)


# ---------------------------------------------------------------------------- parsing
def test_preprocess_is_imagenet_normalised_at_512():
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 128, 0
    tensor = FaceParser.preprocess(Image.fromarray(image))
    assert tensor.shape == (3, 512, 512) and tensor.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    assert torch.allclose(tensor[:, 100, 200], torch.tensor(expected), atol=1e-6)


@pytest.fixture(scope="module")
def batched_labels(parser, photos):
    return parser.parse(photos, batch_size=2)  # a full batch and a partial one


def test_parse_returns_512_class_maps(batched_labels):
    assert batched_labels.shape == (3, 512, 512) and batched_labels.dtype == np.uint8
    assert batched_labels.max() <= 18
    assert len(np.unique(batched_labels[0])) > 1  # a constant map would hide resizing/ordering mistakes


@pytest.mark.slow  # face parsing, batched and one by one
def test_batched_parse_equals_one_by_one(parser, photos, batched_labels):
    singles = np.stack([parser.parse([image], batch_size=1)[0] for image in photos])
    assert np.array_equal(batched_labels, singles)
    assert not np.array_equal(batched_labels[0], batched_labels[1])


@pytest.mark.slow  # face parsing twice
def test_channels_last_parse_matches_upstreams_layout(parser_file, photos, batched_labels):
    """The parser runs channels-last for speed; upstream's plain layout gives the same
    classes (float sums in another order may flip a near-tie: at most 1 pixel in 10,000)."""
    parser = FaceParser.from_file(parser_file)
    kernels = [p for p in parser.net.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    plain = BiSeNet().eval()
    plain.load_state_dict(parser.net.state_dict())
    with torch.inference_mode():
        logits = plain(torch.stack([FaceParser.preprocess(image) for image in photos]))
    assert logits.is_contiguous()
    upstream = logits.argmax(dim=1).to(torch.uint8).numpy()
    assert (upstream != batched_labels).mean() <= 1e-4


def test_parse_edge_cases(parser):
    assert parser.parse([]).shape == (0, 512, 512)
    with pytest.raises(ValueError, match="batch_size"):
        parser.parse([Image.new("RGB", (8, 8))], batch_size=0)


# ---------------------------------------------------------------------------- region masks
def test_jaw_kernel_is_a_cone_on_a_stem():
    kernel = jaw_dilation_kernel()
    assert kernel.shape == (33, 33) and kernel.dtype == np.uint8 and set(np.unique(kernel)) == {0, 1}
    assert not kernel[:10].any()
    for row in range(10, 21):
        width = 2 * (row - 10) + 1
        assert np.flatnonzero(kernel[row]).tolist() == list(range(16 - width // 2, 16 + width // 2 + 1))
    for row in range(21, 33):
        assert np.flatnonzero(kernel[row]).tolist() == list(range(6, 27))


def test_jaw_kernel_grows_a_point_up_16_px_and_down_6_px():
    """cv2.dilate does not mirror the kernel: the stem (below the anchor) reaches upwards."""
    point = np.zeros((64, 64), dtype=np.uint8)
    point[32, 32] = 255
    grown = cv2.dilate(point, jaw_dilation_kernel())
    rows = np.flatnonzero(grown.any(axis=1))
    assert (rows.min(), rows.max()) == (16, 38)
    assert np.flatnonzero(grown[38]).tolist() == [32]
    assert np.flatnonzero(grown[16]).tolist() == list(range(22, 43))


def test_cheek_mask_columns():
    mask = cheek_mask(90, 90)
    assert np.flatnonzero(mask[0]).tolist() == list(range(167)) + list(range(346, 512))
    assert (mask == mask[0]).all()
    assert np.flatnonzero(cheek_mask(80, 100)[300] == 0).tolist() == list(range(177, 356))
    # cv2.rectangle keeps its inclusive corner at column 0 even for the widest band, as upstream.
    assert np.flatnonzero(cheek_mask(256, 256)[0]).tolist() == [0]


@pytest.fixture(scope="module")
def class_stripes():
    """Rows 20c..20c+19 hold class c (0..18); rows 380.. are background."""
    labels = np.zeros((512, 512), dtype=np.uint8)
    for c in range(19):
        labels[20 * c : 20 * (c + 1)] = c
    return labels


@pytest.mark.parametrize("mode, kept", [("raw", [1, 11, 12, 13]), ("neck", [1, 11, 12, 13, 14])])
def test_raw_and_neck_class_sets(class_stripes, mode, kept):
    mask = region_mask(class_stripes, mode)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert (mask == mask[:, :1]).all()
    assert sorted({int(class_stripes[r, 0]) for r in np.flatnonzero(mask[:, 0])}) == kept


@pytest.fixture(scope="module")
def face_labels():
    """Skin rectangle rows 200-299 x cols 100-411 with a nose patch inside, lips far away in
    the left cheek zone and a neck patch below the chin."""
    labels = np.zeros((512, 512), dtype=np.uint8)
    labels[200:300, 100:412] = 1
    labels[220:230, 250:260] = 10
    labels[400:410, 30:40] = 12
    labels[320:330, 200:210] = 14
    return labels


def test_jaw_mask_by_hand(face_labels):
    """Expected values worked out by hand for cheek widths 90 (band = columns 167-345).

    Dilation D: skin grows 16 px up at +-10 px and 6 px down as a 45-degree point, so D spans
    rows 184-305; rows 184-295 cover columns 90-421, row 305 only the skin columns 100-411.
    Erosion E (35x3 ellipse, twice) trims 34 px per side and 2 rows at the top and bottom:
    row 250 keeps columns 124-387, rows 184-185 and 304-305 are empty.
    """
    mask = region_mask(face_labels, "jaw", 90, 90)
    row = mask[250]
    # Outer cheeks take the eroded skin: skin labels at columns 100-123 are dropped.
    assert np.flatnonzero(row).tolist() == list(range(124, 388))
    # Where E is empty only the chin band remains: dilated skin reaching into background labels.
    for r in (184, 185, 304, 305):
        assert np.flatnonzero(mask[r]).tolist() == list(range(167, 346)), r
    assert not mask[183].any() and not mask[306:400].any()
    # Row 300 is 5 rows into the pointed bottom of D: half-width 5 and E's width shrinks alike.
    assert np.flatnonzero(mask[300]).tolist() == list(range(129, 383))
    # The nose is cut out of the skin region; mouth/lip classes are kept anywhere.
    assert not mask[220:230, 250:260].any() and mask[220:230, 249].all() and mask[220:230, 260].all()
    assert mask[400:410, 30:40].all() and (mask[400:] == 255).sum() == 100
    assert not mask[320:330, 200:210].any()


def test_jaw_mask_follows_cheek_widths(face_labels):
    narrow = region_mask(face_labels, "jaw", 40, 120)
    assert np.flatnonzero(narrow[305]).tolist() == list(range(217, 376))


def test_region_mask_rejects_bad_input(face_labels):
    with pytest.raises(ValueError, match="mode must be one of"):
        region_mask(face_labels, "lips")
    with pytest.raises(ValueError, match="512x512"):
        region_mask(face_labels[:256], "raw")
