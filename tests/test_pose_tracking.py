import numpy as np
import pytest

from dynamictrl.pose.tracking import box_iou, fill_missing_people, track_people
from dynamictrl.pose.types import FramePose, PersonPose


def person_in_box(x0, y0, x1, y1, with_box=True) -> PersonPose:
    """A person whose visible body points span the box (and, if asked, the detector box)."""
    xs = np.linspace(x0, x1, 18)
    ys = np.linspace(y0, y1, 18)
    return PersonPose(
        body=np.stack([xs, ys], -1),
        body_scores=np.ones(18),
        face=np.zeros((68, 2)),
        face_scores=np.zeros(68),
        left_hand=np.zeros((21, 2)),
        left_hand_scores=np.zeros(21),
        right_hand=np.zeros((21, 2)),
        right_hand_scores=np.zeros(21),
        box=np.array([x0, y0, x1, y1]) if with_box else None,
    )


def ids(frame: FramePose) -> list[int]:
    return [person.track_id for person in frame.people]


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 2, 2], [0, 0, 0, 0]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2]]))
    np.testing.assert_allclose(iou, [[1 / 7, 1.0], [0.0, 0.0]])


def test_two_people_crossing_paths_keep_their_ids_whatever_the_list_order():
    # Same-sized boxes walking through each other, listed in swapped order every other
    # frame: at frame 4 each box sits exactly where the *other* person was at frame 3,
    # so only the motion carried by the track keeps the identities apart.
    frames = []
    for t in range(8):
        walker_right = person_in_box(0.1 + 0.1 * t, 0.2, 0.3 + 0.1 * t, 0.9)
        walker_left = person_in_box(0.8 - 0.1 * t, 0.2, 1.0 - 0.1 * t, 0.9)
        people = [walker_right, walker_left] if t % 2 == 0 else [walker_left, walker_right]
        frames.append(FramePose(people))
    tracked = track_people(frames)
    for t, frame in enumerate(tracked):
        by_x_motion = {round(float(p.box[0]), 3): p.track_id for p in frame.people}
        assert by_x_motion[round(0.1 + 0.1 * t, 3)] == 0  # the right-walker was listed first at frame 0
        assert by_x_motion[round(0.8 - 0.1 * t, 3)] == 1


def test_person_missing_for_two_frames_gets_the_same_id_and_a_newcomer_a_new_one():
    still = person_in_box(0.6, 0.1, 0.9, 0.9, with_box=False)  # keypoint boxes work too
    frames = []
    for t in range(8):
        people = [still.copy()]
        if t not in (3, 4):
            people.append(person_in_box(0.1 + 0.01 * t, 0.1, 0.4 + 0.01 * t, 0.9, with_box=False))
        if t >= 6:
            people.append(person_in_box(0.45, 0.5, 0.55, 0.6))
        frames.append(FramePose(people))
    tracked = track_people(frames)
    assert [ids(frame) for frame in tracked] == [[0, 1]] * 3 + [[0]] * 2 + [[0, 1]] + [[0, 1, 2]] * 2


def test_a_track_unseen_for_longer_than_the_memory_is_closed():
    frames = [FramePose([person_in_box(0.1, 0.1, 0.4, 0.9)])] + [FramePose([])] * 3
    frames.append(FramePose([person_in_box(0.1, 0.1, 0.4, 0.9)]))
    assert [ids(f) for f in track_people(frames, memory=2)] == [[0], [], [], [], [1]]
    assert [ids(f) for f in track_people(frames, memory=5)] == [[0], [], [], [], [0]]


def test_tracking_copies_and_leaves_the_input_alone():
    frames = [FramePose([person_in_box(0.1, 0.1, 0.4, 0.9)])]
    tracked = track_people(frames)
    assert tracked[0].people[0].track_id == 0 and frames[0].people[0].track_id is None
    with pytest.raises(ValueError, match="iou_threshold"):
        track_people(frames, iou_threshold=1.5)


def test_fill_missing_people_copies_the_previous_pose_and_counts():
    first = person_in_box(0.1, 0.1, 0.4, 0.9)
    second = person_in_box(0.5, 0.1, 0.8, 0.9)
    frames = [FramePose([]), FramePose([first]), FramePose([]), FramePose([]), FramePose([second])]
    filled, count = fill_missing_people(frames)
    assert count == 3
    assert [len(frame.people) for frame in filled] == [1, 1, 1, 1, 1]
    for t in (0, 2, 3):  # leading frame takes the first person seen, the gap the previous one
        np.testing.assert_array_equal(filled[t].people[0].body, first.body)
    np.testing.assert_array_equal(filled[4].people[0].body, second.body)
    filled[2].people[0].body[0] = 9.0  # copies, not shared records
    assert first.body[0, 0] != 9.0 and filled[3].people[0].body[0, 0] != 9.0
    assert fill_missing_people([FramePose([first])])[1] == 0


def test_fill_missing_people_without_anyone_names_the_problem():
    with pytest.raises(ValueError, match="No person detected in the driving video"):
        fill_missing_people([FramePose([]), FramePose([])])
