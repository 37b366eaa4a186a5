"""Person identities across driving frames, and frames where the detector found no one.

The detector lists the people of each frame in no stable order, so "person 0" of one
frame need not be "person 0" of the next. `track_people` gives every person a
`track_id` that stays with them through the video; retargeting uses it to send each
dancer to the same reference person in every frame. `fill_missing_people` covers the
frames with nobody in them, which would otherwise render as empty pose frames.
"""

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .types import FramePose

TRACK_MEMORY_FRAMES = 5  # a track unseen for longer than this is closed; its person returns as a new track
_FORBIDDEN_COST = 1e6  # cost of a pairing below the IoU threshold: the assignment takes one only if it must


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of (N, 4) and (M, 4) boxes given as x0, y0, x1, y1."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    # Degenerate boxes (a person with no visible point) have zero area: they overlap nothing.
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # last box seen, (4,)
    velocity: np.ndarray  # displacement of the box per frame between its last two sightings, (2,)
    last_frame: int

    def predicted_box(self, frame_index: int) -> np.ndarray:
        # Moving on at the last speed is what lets two people who cross paths keep their
        # ids: where their boxes overlap, the prediction still points each track the way
        # its person was going.
        shift = self.velocity * (frame_index - self.last_frame)
        return self.box + np.concatenate([shift, shift])

    def update(self, box: np.ndarray, frame_index: int) -> None:
        frames_elapsed = frame_index - self.last_frame
        old_centre = (self.box[:2] + self.box[2:]) / 2
        new_centre = (box[:2] + box[2:]) / 2
        self.velocity = (new_centre - old_centre) / frames_elapsed
        self.box = box
        self.last_frame = frame_index


def track_people(
    frames: list[FramePose], iou_threshold: float = 0.3, memory: int = TRACK_MEMORY_FRAMES
) -> list[FramePose]:
    """Copies of `frames` with `track_id` set on every person, consistent across frames.

    Frame by frame, the people's boxes (`PersonPose.bounding_box()`) are matched to the
    open tracks by Hungarian assignment on box IoU, each track represented by its last
    box moved on at its last speed. A pairing needs IoU >= `iou_threshold`. A person
    left unmatched opens a new track (ids count up from 0 in order of first
    appearance); a track not seen for more than `memory` frames is closed, so a person
    hidden for a frame or two gets their id back.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be between 0 and 1, got {iou_threshold}.")
    if memory < 1:
        raise ValueError(f"memory must be at least 1 frame, got {memory}.")

    tracked = [frame.copy() for frame in frames]
    open_tracks: list[_Track] = []
    next_track_id = 0
    for frame_index, frame in enumerate(tracked):
        open_tracks = [track for track in open_tracks if frame_index - track.last_frame <= memory]
        people = frame.people
        if not people:
            continue
        boxes = np.stack([person.bounding_box() for person in people]).astype(np.float64)

        matched_people: set[int] = set()
        if open_tracks:
            predicted = np.stack([track.predicted_box(frame_index) for track in open_tracks])
            iou = box_iou(boxes, predicted)
            # Gating by a huge cost (rather than filtering afterwards) makes the
            # assignment maximise the number of valid pairings first, then their IoU.
            cost = np.where(iou >= iou_threshold, 1.0 - iou, _FORBIDDEN_COST)
            for person_index, track_index in zip(*linear_sum_assignment(cost)):
                if iou[person_index, track_index] < iou_threshold:
                    continue
                track = open_tracks[track_index]
                people[person_index].track_id = track.track_id
                track.update(boxes[person_index], frame_index)
                matched_people.add(person_index)

        for person_index, person in enumerate(people):
            if person_index in matched_people:
                continue
            person.track_id = next_track_id
            open_tracks.append(_Track(next_track_id, boxes[person_index], np.zeros(2), frame_index))
            next_track_id += 1
    return tracked


def fill_missing_people(frames: list[FramePose]) -> tuple[list[FramePose], int]:
    """Copies of `frames` in which every frame has at least one person.

    A frame with nobody in it (a detector miss, motion blur) takes a copy of the
    previous frame's people, so the pose video holds still instead of flashing an
    empty frame; leading empty frames take the first frame that has someone. Returns
    the frames and how many were filled.
    """
    first_with_person = next((i for i, frame in enumerate(frames) if frame.people), None)
    if first_with_person is None:
        raise ValueError(
            "No person detected in the driving video (in any of its "
            f"{len(frames)} frames). Use a video in which the dancer is clearly visible, "
            "or check that the right file and time range were picked."
        )

    filled_frames: list[FramePose] = []
    filled_count = 0
    last_people = frames[first_with_person].people
    for frame in frames:
        if frame.people:
            last_people = frame.people
            filled_frames.append(frame.copy())
        else:
            filled_frames.append(FramePose([person.copy() for person in last_people], frame.height, frame.width))
            filled_count += 1
    return filled_frames, filled_count
