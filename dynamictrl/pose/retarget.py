"""Retargeting: moving the driving video's poses onto the reference person.

The driving poses are normalised to the driving frame (fh x fw); the pose video is drawn
at the reference size (H x W) and must put the skeleton where the reference person
stands, at their size. Three modes:

- `global` (default, the official rule): one linear map (x, y) -> (ax x + bx, ay y + by)
  per reference person, fitted on the body points; see `fit_global`.
- `bones`: the global map first, then every limb rescaled to the reference person's
  proportions while keeping the driving motion; see `rescale_bones`.
- `none`: no fitting; see `contain_map`.

With several people, driving tracks (`tracking.track_people`) are paired with
reference people by left-to-right rank; see `assign_partners`.

Differences from the official code, on purpose (identical on the official fixture):
driving points with score <= 0.3 are left out of the fit (the official fit used their
unreliable coordinates), and `by` is pinned with the first fit point visible in both
the reference and the first driving person (the official code compared the
reference's first *visible* fit point with frame 0's *nose*, which differ when the
reference nose is hidden).
"""

from dataclasses import dataclass, field, replace

import numpy as np

from .tracking import track_people
from .types import FramePose, PersonPose, pose_from_dict

RETARGET_MODES = ("global", "bones", "none")

# Body points the global fit uses (OpenPose-18): nose, neck, both shoulders, hips, knees,
# ankles, eyes and ears; the elbows and wrists are left out because arms move so much.
FIT_KEYPOINTS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)

# The OpenPose-18 skeleton as a tree rooted at the neck (1), each limb (parent, child),
# parents listed before their children so one pass rebuilds the body outward.
LIMBS = (
    (1, 2), (1, 5), (1, 8), (1, 11), (1, 0),  # neck to shoulders, hips, nose
    (2, 3), (5, 6), (8, 9), (11, 12), (0, 14), (0, 15),  # upper arms, thighs, nose to eyes
    (3, 4), (6, 7), (9, 10), (12, 13), (14, 16), (15, 17),  # forearms, shins, eyes to ears
)  # fmt: skip
NECK, NOSE = 1, 0
LEFT_WRIST, RIGHT_WRIST = 7, 4  # `left_hand` / `right_hand` hang from these
_LIMB_INDEX = {limb: i for i, limb in enumerate(LIMBS)}
LEFT_FOREARM, RIGHT_FOREARM = _LIMB_INDEX[(6, 7)], _LIMB_INDEX[(3, 4)]
HEAD_LIMBS = tuple(_LIMB_INDEX[limb] for limb in ((0, 14), (0, 15), (14, 16), (15, 17)))

# A driving limb's usual length is this percentile of its lengths over the video: near
# the longest (the limb seen side-on), but robust to a few bad detections.
TYPICAL_LENGTH_PERCENTILE = 90


# ----------------------------------------------------------------------------- results


@dataclass
class LinearMap:
    """(x, y) -> (a[0] x + b[0], a[1] y + b[1]) on normalised coordinates."""

    a: np.ndarray  # (2,) [ax, ay]
    b: np.ndarray  # (2,) [bx, by]

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Maps points (..., 2); float64 out, as the official code produced."""
        return np.asarray(points, dtype=np.float64) * self.a + self.b


@dataclass
class GlobalFit(LinearMap):
    fit_poses: int = 0  # driving poses in the least-squares fit
    fit_points: int = 0  # (pose, point) pairs in it
    anchor_keypoint: int | None = None  # body point that pinned `by`; None: least-squares intercept kept


@dataclass
class RetargetResult:
    mode: str
    frames: list[FramePose]  # normalised to the reference image, people keep their track_id
    maps: dict[int, LinearMap]  # reference person index -> map applied to its driving partners
    partners: dict[int, int] = field(default_factory=dict)  # driving track id -> reference person index
    bone_ratios: dict[int, np.ndarray] = field(default_factory=dict)  # bones: track id -> (17,) per LIMBS

    @property
    def a(self) -> np.ndarray:
        """[ax, ay] of the first reference person's map (the only one with one person)."""
        return self.maps[min(self.maps)].a

    @property
    def b(self) -> np.ndarray:
        return self.maps[min(self.maps)].b

    def info(self) -> dict:
        """What the fit was, as plain JSON-able values (saved with a pose run)."""
        maps = []
        for reference_index, linear_map in sorted(self.maps.items()):
            entry = {"reference_person": reference_index, "a": linear_map.a.tolist(), "b": linear_map.b.tolist()}
            if isinstance(linear_map, GlobalFit):
                entry.update(
                    fit_poses=linear_map.fit_poses,
                    fit_points=linear_map.fit_points,
                    anchor_keypoint=linear_map.anchor_keypoint,
                )
            maps.append(entry)
        info = {"mode": self.mode, "a": self.a.tolist(), "b": self.b.tolist(), "maps": maps}
        info["partners"] = [[track_id, reference_index] for track_id, reference_index in sorted(self.partners.items())]
        if self.bone_ratios:
            info["bone_ratios"] = [[track_id, ratios.tolist()] for track_id, ratios in sorted(self.bone_ratios.items())]
        return info


# ----------------------------------------------------------------------------- entry points


def retarget_global(
    ref_pose: dict, driving_poses: list[dict], ref_hw: tuple[int, int], video_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The official retargeting on official pose dicts: returns (a, b, transformed dicts).

    As in the official code, only the reference's first person counts, every driving
    person gets the same map, frames with more than one person are left out of the fit
    (but transformed), and `by` comes from the first person of the first driving frame
    (the first frame that has someone, where the official code would crash on an empty
    frame 0). The dicts keep their layout; coordinates come back float64 (as the official ones
    did), normalised to the reference image.
    """
    _check_sizes(ref_hw, video_hw)
    if not driving_poses:
        raise ValueError(_EMPTY_DRIVING_MESSAGE)
    reference = pose_from_dict(ref_pose, *ref_hw)
    if not reference.people:
        raise ValueError(_NO_REFERENCE_PERSON_MESSAGE)
    driving = [pose_from_dict(pose, *video_hw) for pose in driving_poses]

    fit_people = [frame.people[0] for frame in driving if len(frame.people) == 1]
    if not fit_people:  # the official code crashed here; use everyone rather than fail
        fit_people = [person for frame in driving for person in frame.people]
    anchor_person = next((frame.people[0] for frame in driving if frame.people), None)
    fit = fit_global(reference.people[0], fit_people, anchor_person, ref_hw, video_hw)
    return fit.a, fit.b, [_map_pose_dict(pose, fit) for pose in driving_poses]


def retarget_poses(
    ref: FramePose,
    driving: list[FramePose],
    mode: str,
    ref_hw: tuple[int, int],
    video_hw: tuple[int, int],
) -> RetargetResult:
    """Driving poses moved onto the reference person(s), in reference-image coordinates.

    `ref_hw` = (H, W) of the reference image, `video_hw` = (fh, fw) of the driving
    frames; both poses are normalised to their own image. Driving people without a
    `track_id` are tracked first. Modes: see the module docstring, `fit_global`,
    `rescale_bones` and `contain_map`.
    """
    if mode not in RETARGET_MODES:
        raise ValueError(f"Unknown retarget mode {mode!r}; use one of {', '.join(RETARGET_MODES)}.")
    if not driving:
        raise ValueError(_EMPTY_DRIVING_MESSAGE)
    if not ref.people:
        raise ValueError(_NO_REFERENCE_PERSON_MESSAGE)
    _check_sizes(ref_hw, video_hw)

    if mode == "none":
        linear_map = contain_map(ref_hw, video_hw)
        frames = [_map_frame(frame, lambda person: linear_map, ref_hw) for frame in driving]
        return RetargetResult(mode, frames, {i: linear_map for i in range(len(ref.people))})

    if not any(frame.people for frame in driving):
        raise ValueError(
            "No person in any driving pose, so there is nothing to fit. Use a driving video in "
            "which the dancer is clearly visible (and fill gaps with `fill_missing_people`)."
        )
    if any(person.track_id is None for frame in driving for person in frame.people):
        driving = track_people(driving)
    partners = assign_partners(ref, driving)
    fits = {
        reference_index: _fit_partner(ref, driving, partners, reference_index, ref_hw, video_hw)
        for reference_index in sorted(set(partners.values()))
    }
    aligned = [_map_frame(frame, lambda person: fits[partners[person.track_id]], ref_hw) for frame in driving]
    if mode == "global":
        return RetargetResult(mode, aligned, fits, partners)

    rescaled, ratios = rescale_bones(ref, aligned, partners, ref_hw)
    return RetargetResult(mode, rescaled, fits, partners, ratios)


# ----------------------------------------------------------------------------- global fit


def fit_global(
    ref_person: PersonPose,
    fit_people: list[PersonPose],
    anchor_person: PersonPose | None,
    ref_hw: tuple[int, int],
    video_hw: tuple[int, int],
) -> GlobalFit:
    """The official linear fit of driving poses onto one reference person.

    - Points: `FIT_KEYPOINTS` visible in the reference (score > 0.3), paired with the
      same points of every pose in `fit_people` that are visible there too.
    - `ay` (and a first `by`): least-squares line y_ref = ay * y_drv + by over all pairs.
    - `by` is then re-pinned so that `anchor_person`'s first shared fit point (the nose
      when visible) lands exactly on the reference's: by = y_ref - ay * y_anchor.
    - `ax = ay / ((fh / fw) / (H / W))`: the same scale in pixels on both axes, so the
      body keeps its proportions when the driving and reference aspect ratios differ.
    - `bx = mean(x_ref - ax * x_drv)` over the pairs.
    """
    height, width = ref_hw
    frame_height, frame_width = video_hw
    ref_ids = [k for k in FIT_KEYPOINTS if ref_person.body_visible[k]]
    if not ref_ids:
        raise ValueError(
            "The reference person shows none of the points the global fit uses (nose, neck, "
            "shoulders, hips, knees, ankles, eyes, ears). Use a photo showing more of the body, "
            "or retarget mode 'none'."
        )
    ref_points = ref_person.body[ref_ids]  # (K, 2) float32
    if fit_people:
        driving_points = np.stack([person.body[ref_ids] for person in fit_people])  # (P, K, 2)
        pair_visible = np.stack([person.body_visible[ref_ids] for person in fit_people])  # (P, K)
    else:
        driving_points, pair_visible = np.zeros((0, len(ref_ids), 2), np.float32), np.zeros((0, len(ref_ids)), bool)
    # Pose-major, point-minor order, as the official flattening: the float32 mean below
    # depends on the summation order.
    driving_xy = driving_points[pair_visible]
    ref_xy = np.broadcast_to(ref_points, driving_points.shape)[pair_visible]
    if len(np.unique(driving_xy[:, 1])) < 2:
        raise ValueError(
            "The driving poses show too little of the body for the global fit (fewer than two "
            "distinct visible body points). Use a driving video in which the dancer's body is "
            "visible, or retarget mode 'none'."
        )

    ay, by = np.polyfit(driving_xy[:, 1].astype(np.float64), ref_xy[:, 1].astype(np.float64), 1)
    anchor_keypoint = None
    if anchor_person is not None:
        shared = [k for k in ref_ids if anchor_person.body_visible[k]]
        if shared:
            anchor_keypoint = shared[0]
            by = float(ref_person.body[anchor_keypoint, 1]) - ay * float(anchor_person.body[anchor_keypoint, 1])

    ax = ay / (frame_height / frame_width / height * width)
    # The official code ran on NumPy 1.x, where a float32 array times a float64 scalar
    # stays float32: its bx is a float32 mean of float32 differences. Reproducing that
    # keeps our poses on the official ones to the last bit, hence the rendered frames.
    bx = np.mean(ref_xy[:, 0] - driving_xy[:, 0] * np.float32(ax))
    return GlobalFit(
        a=np.array([ax, ay], dtype=np.float64),
        b=np.array([bx, by], dtype=np.float64),
        fit_poses=len(fit_people),
        fit_points=len(driving_xy),
        anchor_keypoint=anchor_keypoint,
    )


def _fit_partner(
    ref: FramePose,
    driving: list[FramePose],
    partners: dict[int, int],
    reference_index: int,
    ref_hw: tuple[int, int],
    video_hw: tuple[int, int],
) -> GlobalFit:
    """The global fit for one reference person from its driving partners.

    Generalises the official rule "fit on frames with exactly one person" to "fit on
    frames with as many people as the reference": in those, each reference person has
    an unambiguous partner. If no frame qualifies, every partner pose is used.
    """
    partner_people = [
        [person for person in frame.people if partners[person.track_id] == reference_index] for frame in driving
    ]
    fit_people = [
        person
        for frame, people in zip(driving, partner_people)
        if len(frame.people) == len(ref.people)
        for person in people
    ]
    if not fit_people:
        fit_people = [person for people in partner_people for person in people]
    anchor_person = next((people[0] for people in partner_people if people), None)
    return fit_global(ref.people[reference_index], fit_people, anchor_person, ref_hw, video_hw)


# ----------------------------------------------------------------------------- no fit


def contain_map(ref_hw: tuple[int, int], video_hw: tuple[int, int]) -> LinearMap:
    """Mode `none`: the whole driving frame, scaled uniformly to fit inside the
    reference frame and centred (letterboxed), with no fitting to the reference person.

    Pixel scale s = min(W / fw, H / fh); a driving point (x, y) in pixels goes to
    (s x + (W - s fw) / 2, s y + (H - s fh) / 2). The frame centre stays the centre,
    every driving point stays inside the frame, and shapes keep their aspect ratio; the
    dancer keeps their place and size in the driving frame, not the reference person's.
    """
    height, width = ref_hw
    frame_height, frame_width = video_hw
    scale = min(width / frame_width, height / frame_height)
    a = np.array([scale * frame_width / width, scale * frame_height / height])
    return LinearMap(a=a, b=(1.0 - a) / 2.0)


# ----------------------------------------------------------------------------- partners


def assign_partners(ref: FramePose, driving: list[FramePose]) -> dict[int, int]:
    """Driving track id -> index of the reference person it is retargeted to.

    Tracks are ranked left to right by the mean x of their body centre over the
    video, reference people by the x of their neck (body centre if the neck is
    hidden); the k-th track goes to the k-th reference person, tracks beyond the last
    reference person to the last (the nearest rank).
    """
    centres_by_track: dict[int, list[float]] = {}
    for frame in driving:
        for person in frame.people:
            centres_by_track.setdefault(person.track_id, []).append(_body_centre_x(person))
    tracks_left_to_right = sorted(centres_by_track, key=lambda track_id: np.mean(centres_by_track[track_id]))

    def reference_x(person: PersonPose) -> float:
        return float(person.body[NECK, 0]) if person.body_visible[NECK] else _body_centre_x(person)

    reference_left_to_right = sorted(range(len(ref.people)), key=lambda i: reference_x(ref.people[i]))
    last_rank = len(reference_left_to_right) - 1
    return {
        track_id: reference_left_to_right[min(rank, last_rank)] for rank, track_id in enumerate(tracks_left_to_right)
    }


def _body_centre_x(person: PersonPose) -> float:
    visible = person.body_visible
    if visible.any():
        return float(person.body[visible, 0].mean())
    box = person.bounding_box()
    return float(box[0] + box[2]) / 2


# ----------------------------------------------------------------------------- bones


def rescale_bones(
    ref: FramePose, aligned: list[FramePose], partners: dict[int, int], ref_hw: tuple[int, int]
) -> tuple[list[FramePose], dict[int, np.ndarray]]:
    """Mode `bones`: the globally aligned poses with the reference person's proportions.

    Works in reference pixels (normalised coordinates would distort lengths when H != W).
    Per driving track and limb (`LIMBS`), ratio = reference length / the track's usual
    length (`TYPICAL_LENGTH_PERCENTILE` of its lengths over the video). Each frame is
    rebuilt from the neck outward: the neck stays where the global fit put it (that
    keeps the root trajectory), and each limb keeps its driving direction with its
    length times the ratio. A limb seen at its usual length thus gets exactly the
    reference length, and a foreshortened one (pointing at the camera) stays
    proportionally shorter, as in the driving video.

    Invisible joints (score <= 0.3): a limb whose reference end is hidden keeps ratio 1
    (the driving length scaled by the global fit); a joint hidden in the driving frame,
    or hanging from a hidden one, moves with its parent. Hands follow their wrist,
    scaled by their forearm's ratio; the face follows the nose, scaled by the head
    limbs' ratio (nose-eyes-ears).
    """
    height, width = ref_hw
    pixels = np.array([width, height], dtype=np.float64)

    lengths_by_track: dict[int, list[np.ndarray]] = {}
    for frame in aligned:
        for person in frame.people:
            lengths, visible = _limb_lengths(person.body * pixels, person.body_visible)
            lengths_by_track.setdefault(person.track_id, []).append(np.where(visible, lengths, np.nan))

    ratios_by_track: dict[int, np.ndarray] = {}
    hand_scales_by_track: dict[int, tuple[float, float]] = {}
    face_scale_by_track: dict[int, float] = {}
    for track_id, per_frame in lengths_by_track.items():
        reference_person = ref.people[partners[track_id]]
        reference_lengths, reference_visible = _limb_lengths(
            reference_person.body * pixels, reference_person.body_visible
        )
        usual_lengths = _usual_lengths(np.stack(per_frame))
        known = reference_visible & np.isfinite(usual_lengths) & (np.nan_to_num(usual_lengths) > 1e-6)
        ratios = np.ones(len(LIMBS))
        ratios[known] = reference_lengths[known] / usual_lengths[known]
        ratios_by_track[track_id] = ratios
        hand_scales_by_track[track_id] = (ratios[LEFT_FOREARM], ratios[RIGHT_FOREARM])
        head = [i for i in HEAD_LIMBS if known[i]]
        face_scale_by_track[track_id] = (
            float(reference_lengths[head].sum() / usual_lengths[head].sum()) if head else 1.0
        )

    rescaled = []
    for frame in aligned:
        people = [
            _rebuild_person(
                person,
                ratios_by_track[person.track_id],
                hand_scales_by_track[person.track_id],
                face_scale_by_track[person.track_id],
                pixels,
            )
            for person in frame.people
        ]
        rescaled.append(FramePose(people, frame.height, frame.width))
    return rescaled, ratios_by_track


def _limb_lengths(points_px: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(17,) lengths of `LIMBS` in pixels and whether both ends are visible."""
    parents = [parent for parent, _ in LIMBS]
    children = [child for _, child in LIMBS]
    points = np.asarray(points_px, dtype=np.float64)
    lengths = np.linalg.norm(points[children] - points[parents], axis=-1)
    return lengths, visible[parents] & visible[children]


def _usual_lengths(lengths: np.ndarray) -> np.ndarray:
    """(17,) percentile of (frames, 17) lengths ignoring NaN (limb hidden); NaN if never seen."""
    usual = np.full(lengths.shape[1], np.nan)
    for limb in range(lengths.shape[1]):
        seen = lengths[:, limb][np.isfinite(lengths[:, limb])]
        if len(seen):
            usual[limb] = np.percentile(seen, TYPICAL_LENGTH_PERCENTILE)
    return usual


def _rebuild_person(
    person: PersonPose, ratios: np.ndarray, hand_scales: tuple[float, float], face_scale: float, pixels: np.ndarray
) -> PersonPose:
    body = person.body.astype(np.float64) * pixels  # globally aligned, reference pixels
    visible = person.body_visible
    rebuilt = body.copy()  # the neck (root) stays put
    for limb, (parent, child) in enumerate(LIMBS):
        if visible[parent] and visible[child]:
            rebuilt[child] = rebuilt[parent] + ratios[limb] * (body[child] - body[parent])
        else:
            rebuilt[child] = body[child] + (rebuilt[parent] - body[parent])

    def follow(points: np.ndarray, joint: int, scale: float) -> np.ndarray:
        # Points hanging from `joint` keep their offsets from it, scaled, around its new place.
        return (rebuilt[joint] + scale * (points.astype(np.float64) * pixels - body[joint])) / pixels

    left_scale, right_scale = hand_scales
    return replace(
        person.copy(),  # fresh score arrays: the output shares nothing with the input
        body=rebuilt / pixels,
        left_hand=follow(person.left_hand, LEFT_WRIST, left_scale),
        right_hand=follow(person.right_hand, RIGHT_WRIST, right_scale),
        face=follow(person.face, NOSE, face_scale),
        box=None,  # the limbs moved; `bounding_box()` falls back to the visible points
    )


# ----------------------------------------------------------------------------- helpers

_EMPTY_DRIVING_MESSAGE = (
    "No driving poses were given. Pass at least one frame: detect the poses of the driving "
    "video first (and check it has frames in the chosen time range)."
)
_NO_REFERENCE_PERSON_MESSAGE = (
    "No person found in the reference image pose, so there is nobody to retarget to. Use a "
    "reference photo in which one person is clearly visible (ideally full body), or a crop "
    "that keeps the person in frame."
)


def _check_sizes(ref_hw: tuple[int, int], video_hw: tuple[int, int]) -> None:
    for name, size in (("ref_hw", ref_hw), ("video_hw", video_hw)):
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"{name} must be (height, width) in pixels, both positive; got {size}.")


def _map_person(person: PersonPose, linear_map: LinearMap) -> PersonPose:
    box = None
    if person.box is not None:
        corners = linear_map.apply(person.box.reshape(2, 2))
        box = np.concatenate([corners.min(0), corners.max(0)])
    # `replace` re-runs the record's checks, which store the arrays as float32 again.
    return replace(
        person.copy(),  # fresh score arrays: the output shares nothing with the input
        body=linear_map.apply(person.body),
        face=linear_map.apply(person.face),
        left_hand=linear_map.apply(person.left_hand),
        right_hand=linear_map.apply(person.right_hand),
        box=box,
    )


def _map_frame(frame: FramePose, map_for_person, ref_hw: tuple[int, int]) -> FramePose:
    people = [_map_person(person, map_for_person(person)) for person in frame.people]
    return FramePose(people, height=ref_hw[0], width=ref_hw[1])


def _map_pose_dict(pose: dict, linear_map: LinearMap) -> dict:
    """An official pose dict with its candidate, hands and faces mapped; scores kept."""
    bodies = pose["bodies"]

    def mapped(values) -> np.ndarray:
        array = np.asarray(values, dtype=np.float32)
        return linear_map.apply(array.reshape(-1, 2)).reshape(array.shape)

    out_bodies = {key: np.array(value) for key, value in bodies.items() if key != "candidate"}
    out_bodies["candidate"] = mapped(bodies["candidate"]).reshape(-1, 2)
    out = {key: np.array(value) for key, value in pose.items() if key not in ("bodies", "hands", "faces")}
    out.update(bodies=out_bodies, hands=mapped(pose["hands"]), faces=mapped(pose["faces"]))
    return out
