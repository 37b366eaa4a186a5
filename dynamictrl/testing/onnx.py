"""Tiny, deterministic stand-ins for DWPose's two ONNX files (`yzd-v/DWPose`).

Same input/output names, shapes and meaning as the real models, but the outputs are
fixed tables, so a test can predict exactly what the decoding must produce:

- `yolox_l.onnx`: images (1, 3, 640, 640) -> output (1, 8400, 85), raw YOLOX predictions
  (cx, cy relative to the anchor cell, log w, log h, objectness, 80 class scores) holding
  the proposals of `DETECTOR_PROPOSALS` and zeros elsewhere. Two pixels of the
  letterboxed input steer it: channel 0 at (0, 0) gates all objectness scores
  (0 -> nobody is found, >= 1 -> the table as is), and channel 1 at (0, 0) shifts every
  proposal right by `SHIFT_CELLS_PER_255 * value / 255` anchor cells.
- `dw-ll_ucoco_384.onnx`: input (N, 3, 384, 288) -> simcc_x (N, 133, 576),
  simcc_y (N, 133, 768): one peak per keypoint at the bins of `pose_peaks()`, plus
  `POSE_MEAN_GAIN * mean(crop)` added to every bin, so locations are fixed while the
  scores depend (slightly) on the crop, which tells crops apart in batching tests.

`save_tiny_dwpose(folder)` writes both files; `export_pose(path, dynamic_batch=False)`
writes a pose model whose batch dimension is fixed at 1.
"""

from pathlib import Path

import numpy as np
import torch

DET_SIZE = 640
NUM_CLASSES = 80
STRIDES = (8, 16, 32)
POSE_W, POSE_H = 288, 384
NUM_KEYPOINTS = 133
SHIFT_CELLS_PER_255 = 0.25
POSE_MEAN_GAIN = 1e-3

# In letterboxed 640x640 pixels. `cls_score` is the score of class `cls`; the person
# score the pipeline uses is objectness * class-0 score.
DETECTOR_PROPOSALS = [
    # person A: score 0.95, kept first
    dict(stride=32, gx=6, gy=7, cx=200.0, cy=240.0, w=120.0, h=300.0, obj=0.95, cls=0, cls_score=1.0),
    # duplicate of A (IoU ~0.9), score 0.6: removed by NMS
    dict(stride=16, gx=12, gy=15, cx=204.0, cy=244.0, w=120.0, h=296.0, obj=0.8, cls=0, cls_score=0.75),
    # person B: score 0.5, kept second
    dict(stride=32, gx=14, gy=8, cx=460.0, cy=270.0, w=100.0, h=260.0, obj=1.0, cls=0, cls_score=0.5),
    # person with score 0.2: survives NMS (> 0.1) but is dropped (<= 0.3)
    dict(stride=8, gx=12, gy=49, cx=100.0, cy=396.0, w=40.0, h=80.0, obj=0.5, cls=0, cls_score=0.4),
    # a confident car (class 2): never a person
    dict(stride=16, gx=30, gy=10, cx=488.0, cy=168.0, w=64.0, h=48.0, obj=0.9, cls=2, cls_score=1.0),
]
EXPECTED_PEOPLE = (0, 2)  # indices into DETECTOR_PROPOSALS, in output order


def anchor_index(stride: int, gx: int, gy: int) -> int:
    offset = 0
    for s in STRIDES:
        if s == stride:
            return offset + gy * (DET_SIZE // s) + gx
        offset += (DET_SIZE // s) ** 2
    raise ValueError(stride)


def detector_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw output (8400, 85), the mask of x-offset entries that shift, the objectness mask."""
    anchors = sum((DET_SIZE // s) ** 2 for s in STRIDES)
    table = np.zeros((anchors, 5 + NUM_CLASSES), dtype=np.float32)
    shift = np.zeros_like(table)
    objectness = np.zeros_like(table)
    for p in DETECTOR_PROPOSALS:
        row = anchor_index(p["stride"], p["gx"], p["gy"])
        table[row, 0] = p["cx"] / p["stride"] - p["gx"]
        table[row, 1] = p["cy"] / p["stride"] - p["gy"]
        table[row, 2] = np.log(p["w"] / p["stride"])
        table[row, 3] = np.log(p["h"] / p["stride"])
        table[row, 4] = p["obj"]
        table[row, 5 + p["cls"]] = p["cls_score"]
        if p["cls"] != 0:
            table[row, 5] = 0.05  # a little person score too: 0.045, below every threshold
        shift[row, 0] = 1.0
    objectness[:, 4] = 1.0
    return table, shift, objectness


def pose_peaks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per keypoint: x bin (of 576), y bin (of 768), peak value (the score before the
    crop-dependent term). Keypoint 0 (nose) peaks at the crop centre; 3 (left ear) scores
    0.2 (invisible); 4 (right ear) has no positive value at all (location -1)."""
    k = np.arange(NUM_KEYPOINTS)
    x_bins = (37 * k + 11) % (2 * POSE_W)
    y_bins = (53 * k + 7) % (2 * POSE_H)
    values = 0.5 + 0.04 * ((7 * k) % 10)
    x_bins[0], y_bins[0] = POSE_W, POSE_H  # crop centre
    values[3] = 0.2
    values[4] = -0.5
    values[5], values[6] = 0.9, 0.8  # shoulders: the neck is visible
    return x_bins, y_bins, values.astype(np.float32)


def pose_tables() -> tuple[np.ndarray, np.ndarray]:
    x_bins, y_bins, values = pose_peaks()
    simcc_x = np.zeros((NUM_KEYPOINTS, 2 * POSE_W), dtype=np.float32)
    simcc_y = np.zeros((NUM_KEYPOINTS, 2 * POSE_H), dtype=np.float32)
    for k in range(NUM_KEYPOINTS):
        if values[k] <= 0:
            simcc_x[k], simcc_y[k] = values[k], values[k]
        else:
            simcc_x[k, x_bins[k]] = values[k]
            simcc_y[k, y_bins[k]] = values[k]
    return simcc_x, simcc_y


class TinyDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        table, shift, objectness = detector_table()
        self.register_buffer("table", torch.from_numpy(table)[None])
        self.register_buffer("shift_mask", torch.from_numpy(shift)[None])
        self.register_buffer("obj_mask", torch.from_numpy(objectness)[None])

    def forward(self, images):
        gate = torch.clamp(images[:, 0:1, 0:1, 0], 0.0, 1.0)  # (1, 1, 1)
        shift = images[:, 1:2, 0:1, 0] / 255.0 * SHIFT_CELLS_PER_255
        out = self.table + self.shift_mask * shift
        out = out * (1.0 - self.obj_mask + self.obj_mask * gate)
        return out + 0.0 * images.mean()


class TinyPose(torch.nn.Module):
    def __init__(self):
        super().__init__()
        simcc_x, simcc_y = pose_tables()
        self.register_buffer("simcc_x", torch.from_numpy(simcc_x)[None])
        self.register_buffer("simcc_y", torch.from_numpy(simcc_y)[None])

    def forward(self, crops):
        term = crops.mean(dim=(1, 2, 3)).reshape(-1, 1, 1) * POSE_MEAN_GAIN
        return self.simcc_x + term, self.simcc_y + term


def export_detector(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        TinyDetector().eval(),
        (torch.zeros(1, 3, DET_SIZE, DET_SIZE),),
        str(path),
        input_names=["images"],
        output_names=["output"],
        opset_version=17,
        dynamo=False,
    )
    return path


def export_pose(path: str | Path, dynamic_batch: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "simcc_x": {0: "batch"}, "simcc_y": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        TinyPose().eval(),
        (torch.zeros(2 if dynamic_batch else 1, 3, POSE_H, POSE_W),),
        str(path),
        input_names=["input"],
        output_names=["simcc_x", "simcc_y"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return path


def save_tiny_dwpose(folder: str | Path) -> Path:
    """Writes `folder/yolox_l.onnx` and `folder/dw-ll_ucoco_384.onnx`; returns folder."""
    folder = Path(folder)
    export_detector(folder / "yolox_l.onnx")
    export_pose(folder / "dw-ll_ucoco_384.onnx")
    return folder
