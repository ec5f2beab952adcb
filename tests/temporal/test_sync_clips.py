"""Parallel, per-file cached decoding of sync clips (fusion/data/sync_clips.py) on tiny generated videos."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import fusion.data.sync_clips as sync_clips
from fusion.data.disk_cache import DiskCache
from fusion.data.sync_clips import SyncClipDecoder, load_sync_clips
from fusion.data.sync_data import SyncDataModule
from tests.helpers.clips import write_clip

FEATURES = {"sample_rate": 16000, "n_mels": 8, "subframes": 4, "crop_size": 8, "mouth": "box",
            "mouth_box": [0.5, 0.25, 0.4, 0.5]}
SETTINGS = dict(num_test=1, num_val=1, max_offset=3, window=12, eval_repeats=2, batch_size=4, n_mels=8,
                crop_size=8, mouth="box", mouth_box=(0.5, 0.25, 0.4, 0.5), decode_workers=1)


@pytest.fixture
def folder(tmp_path):
    """Four distinct clips (20-23 frames) and one file that is not a video."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        write_clip(videos / f"clip{i}.mpg", frames=20 + i)
    (videos / "corrupt.mpg").write_bytes(b"\x00garbage" * 50)
    return videos


@pytest.fixture
def decodes(monkeypatch):
    """Names of the files decoded in this process (workers=1)."""
    names = []
    decode = sync_clips.load_sync_clip

    def counted(path, *args, **kwargs):
        names.append(sync_clips.Path(path).name)
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(sync_clips, "load_sync_clip", counted)
    return names


def load(folder, cache, workers=1):
    return load_sync_clips(sorted(folder.glob("*.mpg")), SyncClipDecoder(FEATURES, cache_root=str(cache)), workers)


def test_parallel_decoding_gives_the_clips_of_serial_decoding(folder, tmp_path):
    serial, serial_problems = load(folder, tmp_path / "serial", workers=1)
    parallel, parallel_problems = load(folder, tmp_path / "parallel", workers=2)
    assert [c["name"] for c in serial] == [c["name"] for c in parallel] == ["clip0", "clip1", "clip2", "clip3"]
    for one, two in zip(serial, parallel, strict=True):
        for key in ("mouth", "audio", "face"):
            assert one[key].dtype == two[key].dtype and torch.equal(one[key], two[key]), key
        assert one["fps"] == two["fps"] == 25.0 and one["mouth"].shape == (one["audio"].shape[0] // 4, 8, 8)
    assert serial_problems == parallel_problems and [p for p, _ in serial_problems] == [str(folder / "corrupt.mpg")]


def test_adding_a_file_decodes_only_that_file(folder, tmp_path, decodes):
    first, _ = load(folder, tmp_path / "cache")
    assert sorted(decodes) == ["clip0.mpg", "clip1.mpg", "clip2.mpg", "clip3.mpg", "corrupt.mpg"]
    decodes.clear()
    write_clip(folder / "clip4.mpg", frames=24)
    clips, problems = load(folder, tmp_path / "cache")
    assert decodes == ["clip4.mpg"] and len(clips) == 5 and len(problems) == 1
    assert torch.equal(clips[0]["mouth"], first[0]["mouth"])


def test_half_written_entries_are_never_read(folder, tmp_path, decodes):
    cache = tmp_path / "cache"
    clips = [{k: c[k].clone() for k in ("mouth", "audio")} for c in load(folder, cache)[0]]  # maps of files cut below
    decoder = SyncClipDecoder(FEATURES, cache_root=str(cache))
    entry = decoder.cache.path(DiskCache.file_key(folder / "clip1.mpg", decoder.settings()))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    temp = entry.with_name(f".{entry.name}.{int(dead.stdout)}.0123abcd.tmp")
    temp.write_bytes(entry.read_bytes()[:100])  # a writer killed mid-write
    entry.write_bytes(entry.read_bytes()[:-50])  # an entry cut short (e.g. a power loss)
    other = decoder.cache.path(DiskCache.file_key(folder / "clip2.mpg", decoder.settings()))
    np.save(other, np.zeros(3))  # loads, but is not a clip entry
    decodes.clear()
    again, _ = load(folder, cache)
    assert sorted(decodes) == ["clip1.mpg", "clip2.mpg"] and not temp.exists()
    for one, two in zip(clips, again, strict=True):
        assert torch.equal(one["mouth"], two["mouth"]) and torch.equal(one["audio"], two["audio"])


def test_bad_files_are_named_also_from_the_cache(folder, tmp_path, decodes):
    write_clip(folder / "short.mpg", frames=10)
    (folder / "copy_of_corrupt.mpg").write_bytes((folder / "corrupt.mpg").read_bytes())  # shares the cached problem
    for attempt in ("cold", "warm"):
        with pytest.raises(ValueError) as err:
            SyncDataModule(str(folder), str(tmp_path / "cache"), **SETTINGS).prepare(tmp_path / attempt)
        for name in ("corrupt.mpg", "copy_of_corrupt.mpg", "short.mpg"):
            assert f"{folder / name}:" in str(err.value), (attempt, name)
        assert "10 frames" in str(err.value) and "cannot be decoded" in str(err.value)
    assert decodes.count("corrupt.mpg") + decodes.count("copy_of_corrupt.mpg") == 1  # the problem came from the cache
    decodes.clear()
    dm = SyncDataModule(str(folder), str(tmp_path / "cache"), on_error="skip", **SETTINGS)
    dm.prepare(tmp_path / "run")
    report = (tmp_path / "run" / "skipped_videos.csv").read_text()
    assert decodes == [] and all(name in report for name in ("corrupt.mpg", "copy_of_corrupt.mpg", "short.mpg"))
    assert sum(dm.spec["num_clips"].values()) == 4
