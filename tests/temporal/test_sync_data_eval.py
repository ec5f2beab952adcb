"""SyncDataModule on a folder of generated videos, sync metrics, and evaluate_sync on a saved checkpoint."""

import json

import pytest
import torch

from fusion.data.sync_data import SyncDataModule
from fusion.eval.sync_eval import evaluate_sync
from fusion.tasks.sync import SyncTask
from fusion.temporal.metrics import offset_errors, sync_report
from tests.helpers.clips import write_clip

SETTINGS = dict(num_test=2, num_val=1, max_offset=3, window=12, eval_repeats=2, batch_size=4, n_mels=8,
                crop_size=8, mouth="box", mouth_box=(0.5, 0.25, 0.4, 0.5))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for i in range(6):
        write_clip(folder / f"clip{i}.mpg", frames=20)
    return folder


def make_module(video_dir, cache_dir, **extra):
    return SyncDataModule(video_dir=str(video_dir), cache_dir=str(cache_dir), **(SETTINGS | extra))


def test_datamodule_splits_batches_and_determinism(video_dir, tmp_path):
    dm = make_module(video_dir, tmp_path / "cache")
    dm.prepare(tmp_path / "run")
    assert dm.spec["num_clips"] == {"train": 3, "val": 1, "test": 2}
    assert dm.spec["fps"] == pytest.approx(25.0) and dm.spec["max_offset"] == 3
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == 1  # one entry per file content: the 6 are identical
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (3, 12, 8, 8) and batch["video"].dtype == torch.uint8
    assert batch["audio"].shape == (3, 12, 4 * 8)
    assert batch["offset"].abs().max() <= 3 and batch["state"].min() >= 0 and batch["state"].max() <= 6
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["drift"].tolist() == [False, False, True, True]  # 2 constant + 2 drift per clip
    # A second module (cache hit) yields the same split and the same test offsets.
    again = make_module(video_dir, tmp_path / "cache")
    again.prepare(None)
    assert again.spec["test_clips"] == dm.spec["test_clips"]
    again_batch = next(iter(again.test_dataloader()))
    assert torch.equal(again_batch["offset"], test_batch["offset"])
    assert torch.equal(again_batch["audio"], test_batch["audio"])


def test_unusable_videos_are_named_or_skipped(video_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for src in sorted(video_dir.glob("*.mpg")):
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "corrupt.mp4").write_bytes(b"\x00garbage" * 50)
    write_clip(folder / "short.mpg", frames=10)
    with pytest.raises(ValueError) as err:
        make_module(folder, tmp_path / "cache").prepare(tmp_path / "run")
    assert "corrupt.mp4" in str(err.value) and "short.mpg" in str(err.value) and "10 frames" in str(err.value)
    dm = make_module(folder, tmp_path / "cache", on_error="skip")
    dm.prepare(tmp_path / "run")
    report = (tmp_path / "run" / "skipped_videos.csv").read_text()
    assert "corrupt.mp4" in report and "short.mpg" in report
    assert sum(dm.spec["num_clips"].values()) == 6
    with pytest.raises(ValueError, match="video_dir"):
        SyncDataModule(video_dir=None).prepare(None)


def test_offset_errors_and_report_values():
    estimate = torch.tensor([0.0, 2.0, -3.0, 5.0])
    truth = torch.tensor([0.0, 1.0, 0.0, 2.0])
    m = offset_errors(estimate, truth, fps=25.0)
    assert m["offset_mae_ms"] == pytest.approx((0 + 1 + 3 + 3) / 4 * 40.0)
    assert m["within_40ms"] == pytest.approx(0.5)
    # Remaining audio lag truth - estimate = 0, -40, +120, -120 ms: inside [-45, +125] for three of four.
    assert m["within_window"] == pytest.approx(0.75)
    paths = torch.tensor([[2.0, 2.0, 3.0, float("nan")], [0.0, 1.0, 2.0, 3.0]])
    truth = torch.tensor([[2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 2.0, 2.0]])
    report = sync_report(paths, truth, torch.tensor([False, True]), torch.tensor([4, 1]), fps=25.0)
    assert report["offset_mae_ms"] == 0.0 and report["within_40ms"] == 1.0  # median of (2, 2, 3)
    assert report["frame/offset_mae_ms"] == pytest.approx(40.0 / 3)
    assert report["drift/offset_mae_ms"] == pytest.approx(10.0)
    # Drift row: frames 2 and 3 (truth 2) are heard at frames 4 and 5, past the window of 4 frames.
    assert report["drift_heard/count"] == 2.0 and report["drift_heard/offset_mae_ms"] == 0.0
    assert report["baseline/offset_mae_ms"] == pytest.approx(80.0)
    assert report["baseline_drift/offset_mae_ms"] == pytest.approx((1 + 0 + 1 + 1) / 4 * 40.0)


def test_evaluate_sync_is_deterministic_and_writes_metrics(video_dir, tmp_path):
    dm = make_module(video_dir, tmp_path / "cache")
    dm.prepare(None)
    torch.manual_seed(0)
    task = SyncTask(dm.spec, hidden_dim=8, embed_dim=8)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    torch.save(checkpoint, run / "best.ckpt")
    cfg = {"run": str(run), "data": {"video_dir": str(video_dir), "cache_dir": str(tmp_path / "cache"), **SETTINGS}}
    first = evaluate_sync(cfg)
    stored = json.loads((run / "eval_sync" / "metrics.json").read_text())
    assert stored == pytest.approx(first)
    for key in ("offset_mae_ms", "within_40ms", "within_window", "drift/offset_mae_ms", "baseline/offset_mae_ms"):
        assert key in first
    assert 0.0 <= first["within_40ms"] <= 1.0 and first["num_test_clips"] == 2.0
    rows = (run / "eval_sync" / "sync_windows.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 4
    second = evaluate_sync(cfg | {"out_dir": str(tmp_path / "again")})
    assert second == first
    with pytest.raises(ValueError, match="differ from the checkpoint"):
        evaluate_sync(cfg | {"data": cfg["data"] | {"n_mels": 10}, "out_dir": str(tmp_path / "x")})


def test_named_test_clips_stay_out_of_training_and_tracking_settings_key_the_cache(video_dir, tmp_path):
    dm = make_module(video_dir, tmp_path / "cache", test_names="clip[01]$", num_val=1)
    dm.prepare(None)
    assert sorted(dm.spec["test_clips"]) == ["clip0", "clip1"]
    trained = {c["name"] for c in dm.splits["train"] + dm.splits["val"]}
    assert trained.isdisjoint({"clip0", "clip1"}) and len(trained) == 4
    with pytest.raises(ValueError, match="test_names"):
        make_module(video_dir, tmp_path / "cache", test_names="nothing").prepare(None)
    track = make_module(video_dir, tmp_path / "cache", mouth="track")
    other = make_module(video_dir, tmp_path / "cache", mouth="track", tracker={"detect_every": 5})
    assert len({dm.decoder.settings(), track.decoder.settings(), other.decoder.settings()}) == 3
