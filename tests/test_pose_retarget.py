import json

import numpy as np
import pytest

from dynamictrl.pose.retarget import (
    LEFT_FOREARM,
    LEFT_WRIST,
    LIMBS,
    RETARGET_MODES,
    retarget_global,
    retarget_poses,
)
from dynamictrl.pose.types import FramePose, PersonPose, pose_from_dict
from tests.conftest import official_fixture

FIXTURE = ("retarget", "s1_portrait_ref_landscape_video")

# A standing body as pixel-space directions per limb (y down; the person faces the
# camera, so their right side is on the image's left).
STANDING_DIRECTIONS = {
    (1, 2): (-1, 0), (1, 5): (1, 0), (1, 8): (-0.3, 1), (1, 11): (0.3, 1), (1, 0): (0, -1),
    (2, 3): (-0.2, 1), (5, 6): (0.2, 1), (8, 9): (0, 1), (11, 12): (0, 1), (0, 14): (-1, -0.5), (0, 15): (1, -0.5),
    (3, 4): (-0.1, 1), (6, 7): (0.1, 1), (9, 10): (0, 1), (12, 13): (0, 1), (14, 16): (-1, 0.3), (15, 17): (1, 0.3),
}  # fmt: skip
REFERENCE_LENGTHS = {
    (1, 2): 40, (1, 5): 40, (1, 8): 100, (1, 11): 100, (1, 0): 35, (2, 3): 55, (5, 6): 55, (8, 9): 80,
    (11, 12): 80, (0, 14): 12, (0, 15): 12, (3, 4): 50, (6, 7): 50, (9, 10): 75, (12, 13): 75, (14, 16): 14,
    (15, 17): 14,
}  # fmt: skip
HAND_OFFSETS = np.stack([np.linspace(0, 6, 21), np.linspace(0, 18, 21)], -1)  # from the wrist, pixels
FACE_OFFSETS = np.stack([np.linspace(-10, 10, 68), np.linspace(-5, 12, 68)], -1)  # from the nose, pixels


def rotate(direction, degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    x, y = direction
    return np.array([c * x - s * y, s * x + c * y])


def body_pixels(neck, lengths, directions) -> np.ndarray:
    """(18, 2) body points walked out from the neck along the limb tree."""
    points = np.zeros((18, 2))
    points[1] = neck
    for parent, child in LIMBS:
        direction = np.asarray(directions[(parent, child)], dtype=np.float64)
        points[child] = points[parent] + lengths[(parent, child)] * direction / np.linalg.norm(direction)
    return points


def person_from_pixels(body_px, hw, scores=None) -> PersonPose:
    """A person record, normalised to an image of size hw = (H, W); hands and face
    hang from the wrists and the nose."""
    size = np.array([hw[1], hw[0]], dtype=np.float64)
    return PersonPose(
        body=body_px / size,
        body_scores=np.ones(18) if scores is None else scores,
        face=(body_px[0] + FACE_OFFSETS) / size,
        face_scores=np.ones(68),
        left_hand=(body_px[LEFT_WRIST] + HAND_OFFSETS) / size,
        left_hand_scores=np.ones(21),
        right_hand=(body_px[4] + HAND_OFFSETS * [-1, 1]) / size,
        right_hand_scores=np.ones(21),
    )


def limb_vectors(body_px) -> np.ndarray:
    return np.stack([body_px[child] - body_px[parent] for parent, child in LIMBS])


def load_fixture():
    folder = official_fixture(*FIXTURE)
    inputs = json.loads((folder / "input.json").read_text())
    outputs = json.loads((folder / "output.json").read_text())
    return inputs, outputs


# ----------------------------------------------------------------------------- official fit


def test_global_matches_the_official_fixture_exactly():
    inputs, expected = load_fixture()
    a, b, transformed = retarget_global(
        inputs["ref_pose"], inputs["detected_poses"], inputs["ref_image_hw"], inputs["video_frame_hw"]
    )
    np.testing.assert_allclose(a, expected["a"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b, expected["b"], rtol=0, atol=1e-6)
    assert len(transformed) == len(expected["transformed_poses"]) == 5
    for ours, theirs in zip(transformed, expected["transformed_poses"]):
        for key in ("candidate", "subset", "score"):
            np.testing.assert_allclose(ours["bodies"][key], theirs["bodies"][key], rtol=0, atol=1e-6)
        for key in ("hands", "hands_score", "faces", "faces_score"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-6)
    # Frame 3 holds two people: left out of the fit, still transformed (both of them).
    assert np.asarray(transformed[3]["bodies"]["candidate"]).shape == (36, 2)


def test_typed_global_mode_gives_the_official_result():
    inputs, expected = load_fixture()
    ref_hw, video_hw = tuple(inputs["ref_image_hw"]), tuple(inputs["video_frame_hw"])
    reference = pose_from_dict(inputs["ref_pose"], *ref_hw)
    driving = [pose_from_dict(pose, *video_hw) for pose in inputs["detected_poses"]]
    result = retarget_poses(reference, driving, "global", ref_hw, video_hw)

    np.testing.assert_allclose(result.a, expected["a"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.b, expected["b"], rtol=0, atol=1e-6)
    assert result.info()["maps"][0]["fit_poses"] == 4  # frame 3 (two people) left out
    for ours, theirs in zip(result.frames, expected["transformed_poses"]):
        official = pose_from_dict(theirs)
        assert (ours.height, ours.width) == ref_hw and len(ours.people) == len(official.people)
        for person, official_person in zip(ours.people, official.people):
            for attr in ("body", "face", "left_hand", "right_hand", "body_scores"):
                np.testing.assert_allclose(getattr(person, attr), getattr(official_person, attr), rtol=0, atol=1e-6)


def test_hidden_driving_points_stay_out_of_the_fit_and_a_hidden_reference_nose_pins_by_with_the_neck():
    hw = (400, 300)
    reference_px = body_pixels((150, 100), REFERENCE_LENGTHS, STANDING_DIRECTIONS)
    reference_scores = np.ones(18)
    reference_scores[0] = 0.1  # nose hidden in the reference
    reference = FramePose([person_from_pixels(reference_px, hw, reference_scores)])

    driving = []
    for _ in range(3):
        body = reference_px + [0, 30]  # the same body, lower in the frame
        scores = np.ones(18)
        scores[13] = 0.2
        body[13] = (290, 5)  # a hidden ankle with a wild guess: must not bend the fit
        driving.append(FramePose([person_from_pixels(body, hw, scores)]))

    result = retarget_poses(reference, driving, "global", hw, hw)
    np.testing.assert_allclose(result.a, [1, 1], atol=1e-6)
    fit = result.maps[0]
    assert fit.anchor_keypoint == 1  # the neck, the first fit point visible in both
    # Frame 0's neck lands exactly on the reference neck.
    np.testing.assert_allclose(result.frames[0].people[0].body[1], reference.people[0].body[1], atol=1e-6)


# ----------------------------------------------------------------------------- bones


def driving_sequence(video_hw, frames=6):
    """A differently proportioned dancer (short arms, long legs, big head) swinging
    arms and legs, seen smaller in a landscape video."""
    proportions = {limb: 1.0 for limb in LIMBS}
    proportions.update({limb: 0.7 for limb in [(2, 3), (5, 6), (3, 4), (6, 7)]})
    proportions.update({limb: 1.3 for limb in [(8, 9), (11, 12), (9, 10), (12, 13)]})
    proportions.update({limb: 1.2 for limb in [(0, 14), (0, 15), (14, 16), (15, 17)]})
    lengths = {limb: 0.6 * REFERENCE_LENGTHS[limb] * proportions[limb] for limb in LIMBS}
    bodies = []
    for t in range(frames):
        directions = dict(STANDING_DIRECTIONS)
        for limb, swing in [((2, 3), 25), ((3, 4), 40), ((5, 6), -30), ((6, 7), -15), ((8, 9), 10), ((12, 13), -12)]:
            directions[limb] = rotate(STANDING_DIRECTIONS[limb], swing * np.sin(t))
        bodies.append(body_pixels((140 + 4 * t, 60 + 2 * t), lengths, directions))
    return bodies


def test_bones_gives_the_reference_limb_lengths_and_keeps_the_driving_directions():
    ref_hw, video_hw = (400, 300), (240, 320)
    reference_px = body_pixels((150, 100), REFERENCE_LENGTHS, STANDING_DIRECTIONS)
    reference = FramePose([person_from_pixels(reference_px, ref_hw)])
    driving_px = driving_sequence(video_hw)
    driving = [FramePose([person_from_pixels(body, video_hw)]) for body in driving_px]

    result = retarget_poses(reference, driving, "bones", ref_hw, video_hw)
    aligned = retarget_poses(reference, driving, "global", ref_hw, video_hw)
    ref_size = np.array([ref_hw[1], ref_hw[0]])
    reference_lengths = np.linalg.norm(limb_vectors(reference_px), axis=-1)
    for frame, aligned_frame, body_px in zip(result.frames, aligned.frames, driving_px):
        out_px = frame.people[0].body * ref_size
        out_vectors, driving_vectors = limb_vectors(out_px), limb_vectors(body_px)
        np.testing.assert_allclose(np.linalg.norm(out_vectors, axis=-1), reference_lengths, atol=1e-3)
        np.testing.assert_allclose(
            out_vectors / np.linalg.norm(out_vectors, axis=-1, keepdims=True),
            driving_vectors / np.linalg.norm(driving_vectors, axis=-1, keepdims=True),
            atol=1e-5,
        )
        # The root (neck) stays where the global fit put it.
        np.testing.assert_allclose(frame.people[0].body[1], aligned_frame.people[0].body[1], atol=1e-6)
        # Hands scale with their forearm: offsets from the wrist in forearm units are the driving ones.
        forearm_out = np.linalg.norm(out_vectors[LEFT_FOREARM])
        forearm_driving = np.linalg.norm(driving_vectors[LEFT_FOREARM])
        hand_out = frame.people[0].left_hand * ref_size - out_px[LEFT_WRIST]
        np.testing.assert_allclose(hand_out / forearm_out, HAND_OFFSETS / forearm_driving, atol=1e-4)
    assert result.info()["bone_ratios"][0][0] == 0  # track 0's ratios are reported


def test_bones_keeps_foreshortening_and_handles_hidden_joints():
    ref_hw = video_hw = (400, 300)
    reference_px = body_pixels((150, 100), REFERENCE_LENGTHS, STANDING_DIRECTIONS)
    reference_scores = np.ones(18)
    reference_scores[13] = 0.1  # left ankle hidden in the reference: that shin keeps the driving length
    reference = FramePose([person_from_pixels(reference_px, ref_hw, reference_scores)])

    driving_px = [body.copy() for body in driving_sequence(video_hw)]
    foreshortened = driving_px[2]
    foreshortened[4] = foreshortened[3] + 0.5 * (foreshortened[4] - foreshortened[3])  # forearm towards the camera
    hidden_elbow_scores = np.ones(18)
    hidden_elbow_scores[6] = 0.2  # left elbow hidden in frame 4
    driving = [
        FramePose([person_from_pixels(body, video_hw, hidden_elbow_scores if t == 4 else None)])
        for t, body in enumerate(driving_px)
    ]
    result = retarget_poses(reference, driving, "bones", ref_hw, video_hw)
    aligned = retarget_poses(reference, driving, "global", ref_hw, video_hw)
    size = np.array([ref_hw[1], ref_hw[0]])
    right_forearm = LIMBS.index((3, 4))
    left_shin = LIMBS.index((12, 13))

    out_px = [frame.people[0].body * size for frame in result.frames]
    aligned_px = [frame.people[0].body * size for frame in aligned.frames]
    assert np.linalg.norm(limb_vectors(out_px[2])[right_forearm]) == pytest.approx(
        0.5 * REFERENCE_LENGTHS[(3, 4)], abs=1e-3
    )
    assert np.linalg.norm(limb_vectors(out_px[0])[right_forearm]) == pytest.approx(REFERENCE_LENGTHS[(3, 4)], abs=1e-3)
    for t in range(len(driving)):  # hidden reference end: the globally fitted driving length
        assert np.linalg.norm(limb_vectors(out_px[t])[left_shin]) == pytest.approx(
            np.linalg.norm(limb_vectors(aligned_px[t])[left_shin]), abs=1e-3
        )
    # Hidden driving elbow: elbow and wrist move with the shoulder, keeping their fitted offsets.
    np.testing.assert_allclose(out_px[4][[6, 7]] - out_px[4][5], aligned_px[4][[6, 7]] - aligned_px[4][5], atol=1e-3)


# ----------------------------------------------------------------------------- none


def test_none_letterboxes_the_driving_frame_into_the_reference_frame():
    ref_hw, video_hw = (400, 300), (240, 320)  # portrait reference, landscape video
    corners_and_centre = np.array([[0, 0], [1, 1], [0.5, 0.5], [0.25, 0.75]])
    person = person_from_pixels(np.zeros((18, 2)), video_hw)
    person.body[:4] = corners_and_centre
    reference = FramePose([person_from_pixels(body_pixels((150, 100), REFERENCE_LENGTHS, STANDING_DIRECTIONS), ref_hw)])
    result = retarget_poses(reference, [FramePose([person])], "none", ref_hw, video_hw)

    # Scale 300/320 in pixels: the 320x240 frame becomes 300x225, centred with 87.5 px above and below.
    scale = 300 / 320
    expected_px = corners_and_centre * [320, 240] * scale + [0, 87.5]
    np.testing.assert_allclose(result.frames[0].people[0].body[:4] * [300, 400], expected_px, atol=1e-4)
    np.testing.assert_allclose(result.frames[0].people[0].body[2], [0.5, 0.5], atol=1e-7)


# ----------------------------------------------------------------------------- several people


def test_driving_tracks_go_to_the_reference_person_of_the_same_left_to_right_rank():
    hw = (400, 600)
    right_px = body_pixels((450, 100), REFERENCE_LENGTHS, STANDING_DIRECTIONS)
    left_px = body_pixels((150, 120), {k: 0.8 * v for k, v in REFERENCE_LENGTHS.items()}, STANDING_DIRECTIONS)
    # The reference lists the right-hand person first: rank, not list order, must decide.
    reference = FramePose([person_from_pixels(right_px, hw), person_from_pixels(left_px, hw)])

    frames = []
    for t in range(4):
        dancer_left = person_from_pixels(left_px + [20 + 3 * t, 10], hw)
        dancer_right = person_from_pixels(right_px + [-20 - 3 * t, 10], hw)
        people = [dancer_left, dancer_right] if t % 2 else [dancer_right, dancer_left]
        if t == 2:  # a third, right-most person walks by: nearest rank is the right reference person
            people.append(person_from_pixels(right_px * [0.5, 0.5] + [340, 150], hw))
        frames.append(FramePose(people))

    result = retarget_poses(reference, frames, "global", hw, hw)  # tracks itself (no track_id yet)
    track_of_left_dancer = result.frames[0].people[1].track_id
    track_of_right_dancer = result.frames[0].people[0].track_id
    extra_track = result.frames[2].people[2].track_id
    assert result.partners == {track_of_left_dancer: 1, track_of_right_dancer: 0, extra_track: 0}
    for frame in result.frames:
        for person in frame.people:
            partner = reference.people[result.partners[person.track_id]]
            if person.track_id != extra_track:  # each dancer was fitted onto their own partner
                np.testing.assert_allclose(person.body[1, 1], partner.body[1, 1], atol=0.01)
                assert abs(person.body[1, 0] - partner.body[1, 0]) < 0.02
    assert result.maps[0].fit_poses == 3 and result.maps[1].fit_poses == 3  # the 3-person frame is left out


# ----------------------------------------------------------------------------- errors


def test_bad_input_names_the_problem_and_the_fix():
    hw = (400, 300)
    person = person_from_pixels(body_pixels((150, 100), REFERENCE_LENGTHS, STANDING_DIRECTIONS), hw)
    reference, driving = FramePose([person]), [FramePose([person.copy()])]
    assert RETARGET_MODES == ("global", "bones", "none")
    with pytest.raises(ValueError, match="Unknown retarget mode 'affine'; use one of global, bones, none"):
        retarget_poses(reference, driving, "affine", hw, hw)
    with pytest.raises(ValueError, match="No driving poses were given"):
        retarget_poses(reference, [], "global", hw, hw)
    with pytest.raises(ValueError, match="No person found in the reference image"):
        retarget_poses(FramePose([]), driving, "bones", hw, hw)
    with pytest.raises(ValueError, match="No person in any driving pose"):
        retarget_poses(reference, [FramePose([])], "global", hw, hw)
    with pytest.raises(ValueError, match="ref_hw must be"):
        retarget_poses(reference, driving, "global", (0, 300), hw)
    empty_dict = {
        "bodies": {"candidate": [], "subset": [], "score": []},
        "hands": [],
        "hands_score": [],
        "faces": [],
        "faces_score": [],
    }
    with pytest.raises(ValueError, match="No person found in the reference image"):
        retarget_global(empty_dict, [empty_dict], hw, hw)
    with pytest.raises(ValueError, match="No driving poses"):
        retarget_global(empty_dict, [], hw, hw)
