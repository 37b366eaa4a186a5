"""Pose stage: DWPose detection, rendering, retargeting and pose-sequence building."""

from .types import FramePose, PersonPose, load_poses, pose_from_dict, pose_to_dict, save_poses

__all__ = ["FramePose", "PersonPose", "load_poses", "pose_from_dict", "pose_to_dict", "save_poses"]
