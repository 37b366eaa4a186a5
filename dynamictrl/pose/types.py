"""Typed pose records: one `FramePose` per frame, one `PersonPose` per person.

Coordinates are normalised (x / width, y / height) of the frame they were detected in
and are not clipped (points slightly outside the frame occur). They serialise to JSON,
so a pose run can be saved, reloaded and edited, and convert to and from the dict
layout of the official DWPose code (`tests/fixtures/official/README.md`), which the renderer
and the reference fixtures use.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..outputs import write_atomic

NUM_BODY = 18  # OpenPose-18 order: 0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8-10 right leg, 11-13 left leg, 14-17 eyes/ears
NUM_FACE = 68
NUM_HAND = 21
VISIBLE_SCORE = 0.3  # body points at or below this are invisible (official threshold)


def _array(values, shape) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"expected shape {shape}, got {array.shape}")
    return array


@dataclass
class PersonPose:
    body: np.ndarray  # (18, 2)
    body_scores: np.ndarray  # (18,)
    face: np.ndarray  # (68, 2)
    face_scores: np.ndarray  # (68,)
    left_hand: np.ndarray  # (21, 2), COCO-WholeBody keypoints 92:113
    left_hand_scores: np.ndarray  # (21,)
    right_hand: np.ndarray  # (21, 2), COCO-WholeBody keypoints 113:133
    right_hand_scores: np.ndarray  # (21,)
    box: np.ndarray | None = None  # (4,) x0, y0, x1, y1 normalised, from the detector
    track_id: int | None = None  # identity across frames (set by tracking)

    def __post_init__(self):
        self.body = _array(self.body, (NUM_BODY, 2))
        self.body_scores = _array(self.body_scores, (NUM_BODY,))
        self.face = _array(self.face, (NUM_FACE, 2))
        self.face_scores = _array(self.face_scores, (NUM_FACE,))
        self.left_hand = _array(self.left_hand, (NUM_HAND, 2))
        self.left_hand_scores = _array(self.left_hand_scores, (NUM_HAND,))
        self.right_hand = _array(self.right_hand, (NUM_HAND, 2))
        self.right_hand_scores = _array(self.right_hand_scores, (NUM_HAND,))
        if self.box is not None:
            self.box = _array(self.box, (4,))

    @property
    def body_visible(self) -> np.ndarray:
        return self.body_scores > VISIBLE_SCORE

    def bounding_box(self) -> np.ndarray:
        """The detector box if known, else the box of the visible body points."""
        if self.box is not None:
            return self.box
        points = self.body[self.body_visible]
        if len(points) == 0:
            return np.zeros(4, dtype=np.float32)
        return np.concatenate([points.min(0), points.max(0)]).astype(np.float32)

    def copy(self) -> "PersonPose":
        return PersonPose(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})

    def to_json(self) -> dict:
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> "PersonPose":
        return cls(**data)


@dataclass
class FramePose:
    people: list[PersonPose] = field(default_factory=list)
    height: int | None = None  # size of the frame the coordinates are normalised to
    width: int | None = None

    def copy(self) -> "FramePose":
        return FramePose([p.copy() for p in self.people], self.height, self.width)

    def to_json(self) -> dict:
        return {"height": self.height, "width": self.width, "people": [p.to_json() for p in self.people]}

    @classmethod
    def from_json(cls, data: dict) -> "FramePose":
        return cls([PersonPose.from_json(p) for p in data["people"]], data.get("height"), data.get("width"))


def pose_to_dict(frame: FramePose) -> dict:
    """The official DWPose dict (numpy arrays) for one frame."""
    n = len(frame.people)
    people = frame.people
    subset = np.full((n, NUM_BODY), -1.0, dtype=np.float32)
    for i, person in enumerate(people):
        subset[i, person.body_visible] = (NUM_BODY * i + np.arange(NUM_BODY))[person.body_visible]

    def stack(attr, shape):
        return np.stack([getattr(p, attr) for p in people]) if n else np.zeros((0, *shape), dtype=np.float32)

    return {
        "bodies": {
            "candidate": stack("body", (NUM_BODY, 2)).reshape(n * NUM_BODY, 2),
            "subset": subset,
            "score": stack("body_scores", (NUM_BODY,)),
        },
        "hands": np.concatenate([stack("left_hand", (NUM_HAND, 2)), stack("right_hand", (NUM_HAND, 2))]),
        "hands_score": np.concatenate(
            [stack("left_hand_scores", (NUM_HAND,)), stack("right_hand_scores", (NUM_HAND,))]
        ),
        "faces": stack("face", (NUM_FACE, 2)),
        "faces_score": stack("face_scores", (NUM_FACE,)),
    }


def pose_from_dict(pose: dict, height: int | None = None, width: int | None = None) -> FramePose:
    """A `FramePose` from the official dict (numpy arrays or nested lists).

    Body visibility comes from `bodies.score`; where a dict has no score, from `subset`.
    """
    bodies = pose["bodies"]
    candidate = np.asarray(bodies["candidate"], dtype=np.float32).reshape(-1, NUM_BODY, 2)
    n = candidate.shape[0]
    subset = np.asarray(bodies.get("subset", np.zeros((n, NUM_BODY))), dtype=np.float32).reshape(n, NUM_BODY)
    if "score" in bodies:
        body_scores = np.asarray(bodies["score"], dtype=np.float32).reshape(n, NUM_BODY)
    else:
        body_scores = np.where(subset >= 0, 1.0, 0.0).astype(np.float32)
    hands = np.asarray(pose["hands"], dtype=np.float32).reshape(2 * n, NUM_HAND, 2)
    hands_score = np.asarray(pose["hands_score"], dtype=np.float32).reshape(2 * n, NUM_HAND)
    faces = np.asarray(pose["faces"], dtype=np.float32).reshape(n, NUM_FACE, 2)
    faces_score = np.asarray(pose["faces_score"], dtype=np.float32).reshape(n, NUM_FACE)
    people = [
        PersonPose(
            body=candidate[i],
            body_scores=body_scores[i],
            face=faces[i],
            face_scores=faces_score[i],
            left_hand=hands[i],
            left_hand_scores=hands_score[i],
            right_hand=hands[n + i],
            right_hand_scores=hands_score[n + i],
        )
        for i in range(n)
    ]
    return FramePose(people, height, width)


def save_poses(path: str | Path, frames: list[FramePose], **metadata) -> Path:
    """Writes a pose run as JSON: {"version": 1, "metadata": {...}, "frames": [...]}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": 1, "metadata": metadata, "frames": [f.to_json() for f in frames]}
    return write_atomic(path, lambda partial: partial.write_text(json.dumps(payload)))  # never a truncated file


def load_poses(path: str | Path) -> tuple[list[FramePose], dict]:
    """Reads what `save_poses` wrote; returns (frames, metadata)."""
    try:
        payload = json.loads(Path(path).read_text())
        frames = [FramePose.from_json(f) for f in payload["frames"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a pose file written by DynamiCtrl Studio ({error}).") from error
    return frames, payload.get("metadata", {})
