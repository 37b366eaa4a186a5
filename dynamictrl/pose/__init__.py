"""Pose stage: DWPose detection, training-identical rendering, retargeting, and the
pose-sequence builder that turns a reference image + driving video into the pose video.

    detector.py  DWPoseDetector (YOLOX + RTMPose on onnxruntime)
    render.py    draw_pose: the official skeleton drawing, pixel for pixel
    retarget.py  retarget_poses / retarget_global: driving poses onto the reference body
    tracking.py  identities across frames, gap filling
    sequence.py  build_pose_sequence: all of the above, in the official order
    types.py     FramePose / PersonPose records, JSON, official dict converters
"""

from .render import draw_pose, draw_pose_video, overlay_pose
from .retarget import RETARGET_MODES, retarget_global, retarget_poses
from .types import FramePose, PersonPose, load_poses, pose_from_dict, pose_to_dict, save_poses

__all__ = [
    "RETARGET_MODES",
    "FramePose",
    "PersonPose",
    "draw_pose",
    "draw_pose_video",
    "load_poses",
    "overlay_pose",
    "pose_from_dict",
    "pose_to_dict",
    "retarget_global",
    "retarget_poses",
    "save_poses",
]
