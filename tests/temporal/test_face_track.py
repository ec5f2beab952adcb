"""Face and mouth tracking: smoothing and confidence on constructed detections, the no-face error, and on a GRID
clip moved and zoomed inside a larger frame the tracked mouth box follows the face."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.data.face_track import (
    MOUTH_IN_FACE,
    FaceTracker,
    NoFaceError,
    TrackerConfig,
    crop_box,
    mouth_boxes,
    smooth_track,
)
from fusion.data.video_io import DEFAULT_MOUTH_BOX, load_sync_clip, read_video
from fusion.errors import ConfigError
from tests.helpers.clips import write_clip

REPO = Path(__file__).resolve().parents[2]
GRID = Path(os.environ.get("FUSION_REALDATA", REPO / ".." / "shared" / "data")) / "grid"


def test_smoothing_interpolates_rejects_an_outlier_and_scores_confidence():
    config = TrackerConfig(detect_every=2, smooth=3, confident_weight=4.0)
    frames_at = np.array([0, 2, 4, 8, 10])  # frame 6: the detector ran and found nothing
    found = np.array([[100, 50, 40], [102, 50, 40], [300, 50, 40], [106, 50, 40], [108, 50, 40]], dtype=float)
    weights = np.array([8.0, 8.0, 2.0, 8.0, 8.0])
    track = smooth_track(frames_at, found, weights, 11, config)
    assert track.boxes.shape == (11, 3)
    assert track.boxes[:, 0].max() < 120  # the jump to x=300 at frame 4 is a median outlier
    assert track.boxes[1, 0] == pytest.approx((track.boxes[0, 0] + track.boxes[2, 0]) / 2)
    assert track.confidence[0] == 1.0 and track.confidence[4] == pytest.approx(0.5)
    assert track.confidence[6] == 0.0 and track.confidence[5] == pytest.approx(0.25)  # between 0.5 and 0
    assert track.detected.tolist() == [i in (0, 2, 4, 8, 10) for i in range(11)]


def test_mouth_box_is_the_lower_face_and_crops_pad_at_the_edge():
    track = smooth_track(np.array([0]), np.array([[100.0, 80.0, 100.0]]), np.array([9.0]), 1, TrackerConfig())
    x0, y0, x1, y1 = mouth_boxes(track, MOUTH_IN_FACE)[0]
    assert (x0, y0) == pytest.approx((50 + 15, 30 + 52)) and (x1 - x0, y1 - y0) == pytest.approx((72, 60))
    frame = np.zeros((60, 80), dtype=np.uint8)
    frame[:, 40:] = 200
    crop = crop_box(frame, np.array([40.0, 30.0, 120.0, 90.0]), (8, 8))  # runs past the right and bottom edge
    assert crop.shape == (8, 8) and crop.min() == 200


def test_video_without_a_face_is_named_and_bad_settings_are_rejected(tmp_path):
    path = tmp_path / "noface.mpg"
    write_clip(path)
    with pytest.raises(NoFaceError, match="noface.mpg.*no face found.*data.mouth=box"):
        load_sync_clip(path, mouth="track")
    assert load_sync_clip(path, mouth="box", box=DEFAULT_MOUTH_BOX)["face"].eq(1).all()
    with pytest.raises(ConfigError, match="mouth"):
        load_sync_clip(path, mouth="lips")
    with pytest.raises(ConfigError, match="odd smooth"):
        TrackerConfig(smooth=4)
    with pytest.raises(NoFaceError):
        FaceTracker().finish("empty.mp4")


@pytest.mark.realdata
@pytest.mark.skipif(not (GRID / "video").is_dir(), reason="GRID data not found (set FUSION_REALDATA)")
def test_tracked_mouth_follows_a_grid_face_moved_and_zoomed():
    import cv2

    frames = read_video(GRID / "video" / "bbaf5a.mpg").frames[:30].numpy()  # (T, 288, 360)
    scale, dx, dy = 1.3, 150.0, 40.0  # into a 640x480 frame
    matrix = np.array([[scale, 0, dx], [0, scale, dy]])
    moved = [cv2.warpAffine(f, matrix, (640, 480)) for f in frames]
    plain, tracker = FaceTracker(), FaceTracker()
    for original, shifted in zip(frames, moved, strict=True):
        plain.add(original)
        tracker.add(shifted)
    box = mouth_boxes(plain.finish("bbaf5a"), MOUTH_IN_FACE)  # (T, 4) in the original frame
    box_moved = mouth_boxes(tracker.finish("moved"), MOUTH_IN_FACE)
    expected = box * scale + np.array([dx, dy, dx, dy])
    assert np.abs(box_moved - expected).max() < 0.05 * (expected[0, 2] - expected[0, 0])  # within 5 % of the box
    # On GRID's own framing the tracked crop is the fixed GRID box's crop.
    top, left, height, width = DEFAULT_MOUTH_BOX
    fixed = np.array([left * 360, top * 288, (left + width) * 360, (top + height) * 288])
    assert np.abs(box.mean(0) - fixed).max() < 8.0
    crops = torch.from_numpy(np.stack([crop_box(f, b, (32, 32)) for f, b in zip(moved, box_moved, strict=True)]))
    reference = torch.from_numpy(np.stack([crop_box(f, b, (32, 32)) for f, b in zip(frames, box, strict=True)]))
    assert (crops.float() - reference.float()).abs().mean() < 8.0
