"""Face and mouth tracking for talking-face video: OpenCV's bundled Haar face detector, smoothed over time.

The detector (Viola & Jones 2001; ``haarcascade_frontalface_default.xml`` from the opencv-python wheel, so no
download) runs on every ``detect_every``-th frame, downscaled to at most ``detect_width`` pixels wide. Per
detection the face nearest to the previous one is kept (the largest at the start). Face centre and size are
interpolated over frames without a detection and smoothed with a moving median then a moving mean; the mouth
is a fixed part of the face box (lips and chin), so it follows zoom, shift and resolution. Each frame gets a
face confidence in [0, 1]: the detector's level weight of the nearest detection, 0 far from any detection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from fusion.errors import ConfigError

# Mouth region inside the detected face box (top, left, height, width as fractions of the face side). On GRID
# the Haar face box of speaker s1 is about 134 px; this region then matches the fixed GRID box (rows 170-250,
# columns 120-216 of 360x288), so tracked and fixed crops agree on GRID-framed video.
MOUTH_IN_FACE = (0.52, 0.15, 0.60, 0.72)


@dataclass
class TrackerConfig:
    """Settings of :func:`track_faces` (all part of the decoded-clip cache key).

    Attributes:
        detect_every: run the detector on every n-th frame (1 = every frame).
        detect_width: downscale frames wider than this before detecting (speed; faces stay >= 40 px).
        min_face: smallest face side as a fraction of the frame height.
        min_neighbors: Haar ``minNeighbors`` (higher: fewer, surer detections).
        smooth: moving-median and moving-mean window over detections (odd, in detections).
        mouth_in_face: (top, left, height, width) of the mouth box as fractions of the face side.
        confident_weight: detector level weight that counts as confidence 1 (linear below).
    """

    detect_every: int = 3
    detect_width: int = 360
    min_face: float = 0.15
    min_neighbors: int = 4
    smooth: int = 5
    mouth_in_face: tuple[float, float, float, float] = MOUTH_IN_FACE
    confident_weight: float = 5.0

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.detect_width < 64 or self.smooth < 1 or self.smooth % 2 == 0:
            raise ConfigError(f"tracker settings need detect_every >= 1, detect_width >= 64 and an odd smooth >= 1, "
                              f"got {self.detect_every}, {self.detect_width}, {self.smooth}")
        if not 0 < self.min_face < 1 or self.confident_weight <= 0:
            raise ConfigError(f"tracker min_face must be in (0, 1) and confident_weight > 0, got {self.min_face}, "
                              f"{self.confident_weight}")
        self.mouth_in_face = tuple(float(x) for x in self.mouth_in_face)
        if len(self.mouth_in_face) != 4 or min(self.mouth_in_face[2:]) <= 0:
            raise ConfigError(f"tracker mouth_in_face must be (top, left, height, width), got {self.mouth_in_face}")

    def key(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class NoFaceError(ConfigError):
    """No face was found in a video (raised with the file name)."""


_DETECTOR = None


def face_detector():
    """The bundled frontal-face Haar cascade (loaded once)."""
    global _DETECTOR
    if _DETECTOR is None:
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        _DETECTOR = cv2.CascadeClassifier(path)
        if _DETECTOR.empty():
            raise RuntimeError(f"OpenCV could not load its face detector '{path}' (opencv-python-headless<5 ships it)")
    return _DETECTOR


def detect_faces(frame: np.ndarray, config: TrackerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Faces in one grayscale frame (H, W) uint8.

    Returns:
        (N, 4) float boxes (x, y, w, h) in the frame's pixels and (N,) detector level weights.
    """
    import cv2

    height, width = frame.shape
    scale = min(1.0, config.detect_width / width)
    small = frame if scale == 1.0 else cv2.resize(frame, (round(width * scale), round(height * scale)),
                                                  interpolation=cv2.INTER_AREA)
    side = max(24, round(config.min_face * small.shape[0]))
    boxes, _, weights = face_detector().detectMultiScale3(small, scaleFactor=1.1, minNeighbors=config.min_neighbors,
                                                          minSize=(side, side), outputRejectLevels=True)
    if len(boxes) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    return np.asarray(boxes, dtype=np.float64) / scale, np.asarray(weights, dtype=np.float64).reshape(-1)


def _moving(values: np.ndarray, window: int, reduce) -> np.ndarray:
    """Centred moving ``reduce`` (np.median / np.mean) along axis 0 with the window shrunk at the ends."""
    half = window // 2
    return np.stack([reduce(values[max(0, i - half): i + half + 1], axis=0) for i in range(len(values))])


@dataclass
class FaceTrack:
    """Smoothed face boxes of every frame.

    Attributes:
        boxes: (T, 3) float face centre x, centre y and side in pixels.
        confidence: (T,) face confidence in [0, 1].
        detected: (T,) bool, a detection was kept at this frame.
    """

    boxes: np.ndarray
    confidence: np.ndarray
    detected: np.ndarray


def smooth_track(frames_at: np.ndarray, found: np.ndarray, weights: np.ndarray, num_frames: int,
                 config: TrackerConfig, attempted: np.ndarray | None = None) -> FaceTrack:
    """Interpolates and smooths detections (frame indices ``frames_at``, (N, 3) centres/sides ``found``).

    The confidence is interpolated between the frames the detector ran on (``attempted``, default every
    ``detect_every``-th frame): the detection's scaled weight where a face was kept, 0 where none was found.
    """
    order = np.argsort(frames_at)
    frames_at, found, weights = frames_at[order], found[order], weights[order]
    smoothed = _moving(_moving(found, config.smooth, np.median), config.smooth, np.mean)  # (N, 3)
    t = np.arange(num_frames)
    boxes = np.stack([np.interp(t, frames_at, smoothed[:, j]) for j in range(3)], 1)  # (T, 3)
    if attempted is None:
        attempted = np.arange(0, num_frames, config.detect_every)
    conf_attempted = np.zeros(len(attempted))
    conf_attempted[np.searchsorted(attempted, frames_at)] = np.clip(weights / config.confident_weight, 0.0, 1.0)
    confidence = np.interp(t, attempted, conf_attempted)
    detected = np.zeros(num_frames, dtype=bool)
    detected[frames_at] = True
    return FaceTrack(boxes, confidence, detected)


class FaceTracker:
    """Feeds frames one at a time (streaming), then returns the smoothed :class:`FaceTrack`."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.frames_at: list[int] = []
        self.found: list[np.ndarray] = []
        self.weights: list[float] = []
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        """One grayscale frame (H, W) uint8."""
        index, self.count = self.count, self.count + 1
        if index % self.config.detect_every:
            return
        boxes, weights = detect_faces(frame, self.config)
        if len(boxes) == 0:
            return
        centres = np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2, boxes[:, 2]], 1)  # (N, 3)
        if self.found:  # the face nearest the previous one (relative to its size)
            last = self.found[-1]
            pick = int(np.argmin(np.hypot(centres[:, 0] - last[0], centres[:, 1] - last[1]) / last[2]
                                 + np.abs(np.log(centres[:, 2] / last[2]))))
        else:  # the largest, then the surest
            pick = int(np.lexsort((-weights, -centres[:, 2]))[0])
        self.frames_at.append(index)
        self.found.append(centres[pick])
        self.weights.append(float(weights[pick]))

    def finish(self, source: str = "video") -> FaceTrack:
        """The smoothed track.

        Raises:
            NoFaceError: naming ``source`` when no frame had a face.
        """
        if not self.found:
            checked = (self.count + self.config.detect_every - 1) // self.config.detect_every
            raise NoFaceError(f"video file '{source}': no face found in any of the {checked} frames checked "
                              f"(frontal faces of at least {self.config.min_face:.0%} of the frame height); for "
                              "pre-cropped mouth video use data.mouth=box")
        return smooth_track(np.asarray(self.frames_at), np.stack(self.found), np.asarray(self.weights), self.count,
                            self.config)


def mouth_boxes(track: FaceTrack, mouth_in_face: tuple[float, float, float, float]) -> np.ndarray:
    """Mouth boxes (T, 4) as (x0, y0, x1, y1) pixels from the face track."""
    top, left, height, width = mouth_in_face
    cx, cy, side = track.boxes[:, 0], track.boxes[:, 1], track.boxes[:, 2]
    x0, y0 = cx - side / 2 + left * side, cy - side / 2 + top * side
    return np.stack([x0, y0, x0 + width * side, y0 + height * side], 1)


def crop_box(frame: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cuts ``box`` (x0, y0, x1, y1) from a gray frame (H, W), padding with the edge, and resizes it (area).

    Returns:
        uint8 (size[0], size[1]).
    """
    import cv2

    height, width = frame.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        frame = np.pad(frame, pad, mode="edge")
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return cv2.resize(frame[y0:y1, x0:x1], (size[1], size[0]), interpolation=cv2.INTER_AREA)


def crop_track(frames: np.ndarray | torch.Tensor, track: FaceTrack, size: tuple[int, int] = (32, 32),
               mouth_in_face: tuple[float, float, float, float] = MOUTH_IN_FACE) -> torch.Tensor:
    """Mouth crops of frames (T, H, W) uint8 along a track: uint8 (T, size[0], size[1])."""
    frames = np.asarray(frames)
    boxes = mouth_boxes(track, mouth_in_face)
    return torch.from_numpy(np.stack([crop_box(f, b, size) for f, b in zip(frames, boxes, strict=True)]))
