"""Draws the example inputs shipped in assets/ (run: python assets/make_assets.py).

Everything is drawn here with OpenCV from numbers, so the files are ours (CC0). A red
square sits in the top-left corner of every picture: the tiny test DWPose of tiny mode
"finds" people when that pixel is pure red, so the examples also work there.
"""

import sys
from pathlib import Path

import cv2
import numpy as np

ASSETS = Path(__file__).resolve().parent
sys.path.insert(0, str(ASSETS.parent))  # run from anywhere in the checkout
RED = (255, 0, 0)


def _background(width: int, height: int) -> np.ndarray:
    """A soft sky-to-floor gradient with a horizon line."""
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky, floor = np.array([200, 220, 240.0]), np.array([170, 150, 120.0])
    image = (sky * (1 - rows) + floor * rows) * np.ones((1, width, 1))
    image = image.astype(np.uint8)
    cv2.line(image, (0, int(height * 0.72)), (width, int(height * 0.72)), (140, 120, 100), 2)
    image[:16, :16] = RED
    return np.ascontiguousarray(image)


def _figure(image: np.ndarray, phase: float) -> np.ndarray:
    """A cartoon person: head, torso, arms raised by `phase` (0..1), legs swaying."""
    height, width = image.shape[:2]
    unit = height / 16
    cx, hips_y = width / 2 + np.sin(phase * 2 * np.pi) * unit * 0.4, height * 0.58
    neck = (cx, height * 0.27)
    hips = (cx, hips_y)

    def point(xy):
        return round(xy[0]), round(xy[1])

    skin, shirt, trousers = (235, 190, 160), (200, 40, 60), (40, 50, 110)
    lift = np.sin(phase * 2 * np.pi)
    for side in (-1, 1):
        elbow = (cx + side * unit * 1.4, neck[1] + unit * (1.2 - 1.6 * max(lift * side, 0)))
        hand = (cx + side * unit * 2.4, neck[1] + unit * (2.0 - 3.2 * max(lift * side, 0)))
        cv2.line(image, point((cx + side * unit * 0.6, neck[1] + unit * 0.2)), point(elbow), shirt, int(unit * 0.5))
        cv2.line(image, point(elbow), point(hand), skin, int(unit * 0.4))
        knee = (cx + side * unit * (0.6 + 0.3 * lift * side), hips_y + unit * 2.0)
        foot = (cx + side * unit * 0.9, hips_y + unit * 4.2)
        cv2.line(image, point((cx + side * unit * 0.4, hips_y)), point(knee), trousers, int(unit * 0.6))
        cv2.line(image, point(knee), point(foot), trousers, int(unit * 0.55))
    cv2.rectangle(image, point((cx - unit * 0.8, neck[1])), point((cx + unit * 0.8, hips[1] + unit * 0.2)), shirt, -1)
    cv2.circle(image, point((cx, neck[1] - unit * 0.9)), int(unit * 0.75), skin, -1)
    cv2.circle(image, point((cx, neck[1] - unit * 1.3)), int(unit * 0.7), (60, 40, 30), -1)  # hair
    cv2.circle(image, point((cx, neck[1] - unit * 0.8)), int(unit * 0.62), skin, -1)
    return image


def main() -> None:
    from PIL import Image

    from dynamictrl.video import write_video

    reference = _figure(_background(384, 640), 0.0)
    Image.fromarray(reference).save(ASSETS / "reference_figure.png", optimize=True)
    fps, seconds = 16, 3
    frames = [_figure(_background(256, 448), index / (fps * 1.5)) for index in range(fps * seconds)]
    write_video(ASSETS / "dance_figure.mp4", np.stack(frames), fps=fps)


if __name__ == "__main__":
    main()
