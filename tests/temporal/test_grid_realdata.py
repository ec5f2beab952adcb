"""GRID clips: decoding, the fixed mouth crop and the audio features follow the word alignments."""

import os
from pathlib import Path

import pytest
import torch

from fusion.data.video_io import load_sync_clip
from fusion.temporal.baseline import audio_energy_envelope, mouth_motion_energy

REPO = Path(__file__).resolve().parents[2]
GRID = Path(os.environ.get("FUSION_REALDATA", REPO / ".." / "shared" / "data")) / "grid"

pytestmark = pytest.mark.realdata


def speech_frames(align_file: Path, frames: int) -> torch.Tensor:
    """(T,) bool: frames inside a word (alignment units: 1000 per 25 fps frame)."""
    speech = torch.zeros(frames, dtype=torch.bool)
    for line in align_file.read_text().split("\n"):
        parts = line.split()
        if len(parts) == 3 and parts[2] != "sil":
            speech[int(parts[0]) // 1000: int(parts[1]) // 1000] = True
    return speech


@pytest.mark.skipif(not (GRID / "video").is_dir(), reason="GRID data not found (set FUSION_REALDATA)")
@pytest.mark.parametrize("name", ["bbaf5a", "sbwozn", "lgal8n"])
def test_grid_clip_mouth_and_audio_follow_the_words(name):
    clip = load_sync_clip(GRID / "video" / f"{name}.mpg")
    assert clip["fps"] == pytest.approx(25.0)
    frames = clip["mouth"].shape[0]
    assert frames in (74, 75) and clip["mouth"].shape[1:] == (32, 32) and clip["audio"].shape == (frames * 4, 40)
    speech = speech_frames(GRID / "align" / f"{name}.align", frames)
    energy = audio_energy_envelope(clip["audio"], 4)
    motion = mouth_motion_energy(clip["mouth"])
    # Speech is much louder than the silences, and the cropped mouth moves more while speaking.
    assert energy[speech].mean() > energy[~speech].mean() + 2.0
    assert motion[speech].mean() > 1.25 * motion[~speech].mean()
