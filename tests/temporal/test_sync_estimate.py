"""Whole-file sync estimation: voice activity, the speech-weighted estimate and its confidence, chunked emissions,
and predicting a folder of videos (a CSV row and a plot per file)."""

import pandas as pd
import pytest
import torch

from fusion.eval.sync_estimate import chunked_emissions, estimate_file, voice_activity, weighted_median
from fusion.inference.sync import SyncPredictor
from fusion.temporal.sync import SyncModel
from tests.helpers.clips import BOX, BURST, write_clip

SPEC = {"sample_rate": 16000, "n_mels": 8, "subframes": 4, "crop_size": 8, "mouth": "box", "mouth_box": list(BOX),
        "fps": 25.0, "max_offset": 6}


def test_voice_activity_finds_the_loud_frames():
    energy = torch.full((40,), -8.0)
    energy[10:20] = 0.0
    audio = energy.repeat_interleave(4)[:, None].expand(160, 5)  # (T*S, F)
    speech = voice_activity(audio, 4, dilate=1)
    assert speech.nonzero().flatten().tolist() == list(range(9, 21))
    assert voice_activity(torch.zeros(160, 5), 4).all()  # no dynamic range: all frames count


def test_weighted_median():
    values = torch.tensor([-5.0, 2.0, 2.0, -5.0, 7.0])
    assert weighted_median(values, torch.ones(5)) == 2.0
    assert weighted_median(values, torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5])) == -5.0


def test_chunked_emissions_match_one_pass_and_cover_long_inputs():
    torch.manual_seed(0)
    model = SyncModel(max_offset=3, subframes=2, n_mels=4, crop_size=8, hidden_dim=8, embed_dim=8).eval()
    video, audio = torch.rand(50, 8, 8), torch.randn(50, 8)
    with torch.no_grad():
        whole = model.emissions(video[None], audio[None])[0]
        assert torch.allclose(chunked_emissions(model, video, audio, 50), whole)
        chunked = chunked_emissions(model, video, audio, 20)  # chunks at 0, 10, 20, 30 (owning 0-15, 15-25, ...)
        first = model.emissions(video[None, :20], audio[None, :20])[0]
    assert chunked.shape == (50, 7) and torch.allclose(chunked[:15], first[:15])
    assert not torch.allclose(chunked[15:20], first[15:20])


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    for name in ("a", "b"):
        write_clip(folder / f"{name}.mpg")
    return folder


def test_estimate_counts_speech_frames_only(video_dir, monkeypatch):
    model = SyncModel(max_offset=6, subframes=4, n_mels=8, crop_size=8, hidden_dim=8, embed_dim=8).eval()
    # A path that says +2 while the heard audio is speech (frames 6-19) and -5 elsewhere (16 of 30 frames).
    path = torch.full((30,), -5.0)
    path[6:20] = 2.0
    monkeypatch.setattr(model, "decode", lambda *args, **kwargs: path[None].clone())
    result = estimate_file(model, SPEC, video_dir / "a.mpg")
    assert float(path.median()) == -5.0  # all frames would say -5
    assert result["offset_frames"] == 2.0 and result["offset_ms"] == pytest.approx(80.0)
    # speech frames are BURST (10-19) dilated by 2: frames t with t + path(t) in 8..21 count: 14 at +2, 7 at -5
    assert result["speech_frames"] == len(BURST) + 4 and result["used"].sum() == 21
    assert result["confidence"] == pytest.approx(14 / 21)


def test_predict_a_folder_writes_a_row_and_a_plot_per_file(video_dir, tmp_path):
    torch.manual_seed(0)
    model = SyncModel(max_offset=6, subframes=4, n_mels=8, crop_size=8, hidden_dim=8, embed_dim=8).eval()
    frame = SyncPredictor(model, SPEC, tmp_path).predict(video_dir, plot_dir=tmp_path / "plots")
    assert isinstance(frame, pd.DataFrame) and [p.split("/")[-1] for p in frame["file"]] == ["a.mpg", "b.mpg"]
    assert list(frame.columns) == ["file", "offset_ms", "offset_frames", "confidence", "speech_frames", "face_frames",
                                   "frames", "fps"]
    assert frame["frames"].tolist() == [30, 30] and frame["face_frames"].tolist() == [30, 30]
    assert ((frame["confidence"] >= 0) & (frame["confidence"] <= 1)).all()
    assert (frame["offset_ms"] == frame["offset_frames"] * 40.0).all()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["a.png", "b.png"]
