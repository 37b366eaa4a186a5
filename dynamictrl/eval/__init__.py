"""Evaluation: frame metrics (L1, SSIM, PSNR, PSNR*, LPIPS), video metrics (FID-VID, FVD),
the pred/gt pairing and table writer, and the TikTok benchmark runner.

The protocol and the networks follow DisCo's evaluation code, which produced the TikTok
numbers the paper compares with; see docs/evaluation.md for the exact definitions."""

from .core import (
    ALL_METRICS,
    EvalInputError,
    EvalModels,
    EvalProtocol,
    EvalResult,
    evaluate,
    evaluate_frames,
    markdown_table,
    parse_metrics,
    write_outputs,
)
from .frames import FRAME_METRICS, LpipsMetric, frame_metrics, prepare_frames
from .fvd import VIDEO_METRICS, VideoBackbone, frechet_distance, frechet_from_features

__all__ = [
    "ALL_METRICS",
    "FRAME_METRICS",
    "VIDEO_METRICS",
    "EvalInputError",
    "EvalModels",
    "EvalProtocol",
    "EvalResult",
    "LpipsMetric",
    "VideoBackbone",
    "evaluate",
    "evaluate_frames",
    "frame_metrics",
    "frechet_distance",
    "frechet_from_features",
    "markdown_table",
    "parse_metrics",
    "prepare_frames",
    "write_outputs",
]
