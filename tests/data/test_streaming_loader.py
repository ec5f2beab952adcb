"""Decoding in DataLoader workers: the same batches as decoding in-process, text tokenised per item, workers
from the CPU count, each process decoding only its own share, rows held in flat arrays, video through the
same decoder and cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from fusion.data import datamodule as datamodule_module
from fusion.data.datamodule import ManifestDataModule, default_num_workers
from fusion.data.dataset import Collate
from fusion.data.decoder import MediaDecoder
from fusion.data.disk_cache import DiskCache
from fusion.data.manifest import parse_manifest
from fusion.data.row_table import RowTable


def assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_batch(a[key], b[key])
        else:
            assert torch.equal(a[key], b[key]), key


def test_worker_batches_with_the_disk_cache_equal_in_process_batches(tiny_digits, tmp_path):
    workers = ManifestDataModule(str(tiny_digits), cache="disk", cache_dir=str(tmp_path), num_workers=1, augment=False,
                                 batch_size=8)
    plain = ManifestDataModule(str(tiny_digits), cache="none", num_workers=0, augment=False, batch_size=8)
    for dm in (workers, plain):
        dm.prepare()
    for _ in range(2):  # the first pass writes the cache, the second reads it
        batches = list(workers.val_dataloader())
        expected = list(plain.val_dataloader())
        assert len(batches) == len(expected) == 2
        for a, b in zip(batches, expected, strict=True):
            assert_same_batch(a, b)
    assert workers.val_dataloader().num_workers == 1 and plain.val_dataloader().num_workers == 0
    assert not workers.val_dataloader().pin_memory or torch.cuda.is_available()


def test_text_is_tokenised_in_the_item(tiny_digits):
    dm = ManifestDataModule(str(tiny_digits), cache="none", num_workers=0, augment=False)
    dm.prepare()
    dataset = dm.datasets["train"]
    items = [dataset[i] for i in range(6)]
    with_text = [i for i, item in enumerate(items) if "text" in item]
    assert with_text
    tokens = items[with_text[0]]["text"]
    assert tokens["input_ids"].shape == (dm.max_text_length,) and tokens["input_ids"].dtype == torch.long
    batch = dm.collate(items)
    strings = [dataset.rows[i].media.get("text", "") for i in range(6)]
    assert_same_batch(batch["text"], dm.tokenizer(strings, dm.max_text_length))  # absent text: the "" encoding
    assert batch["mask"]["text"].tolist() == ["text" in item for item in items]


def test_default_num_workers_follows_the_cpus(tiny_digits, monkeypatch):
    for cpus, processes, expected in ((1, 1, 1), (2, 1, 1), (16, 1, 12), (16, 4, 3), (64, 8, 7), (128, 1, 12)):
        monkeypatch.setattr(datamodule_module, "usable_cpus", lambda cpus=cpus: cpus)
        assert default_num_workers(processes) == expected, (cpus, processes)
    monkeypatch.setattr(datamodule_module, "usable_cpus", lambda: 3)
    dm = ManifestDataModule(str(tiny_digits), batch_size=4)
    dm.prepare()
    assert dm.train_dataloader().num_workers == 2
    assert dm.train_dataloader().persistent_workers


def test_each_process_decodes_only_its_own_share(tiny_digits, monkeypatch):
    dm = ManifestDataModule(str(tiny_digits), cache="none", num_workers=0, augment=False)
    loaded: list[str] = []
    load = MediaDecoder.load
    monkeypatch.setattr(MediaDecoder, "load", lambda self, path, m: loaded.append(path) or load(self, path, m))
    dm.prepare()
    assert loaded == []  # validation read headers only
    dataset = dm.datasets["train"]
    shares = []
    for rank in range(2):
        loaded.clear()
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True)
        rows = list(sampler)
        for i in rows:
            dataset[i]
        assert sorted(loaded) == sorted(p for i in rows for m, p in dataset.rows[i].media.items() if m != "text")
        shares.append(set(loaded))
    assert shares[0] and shares[1] and not shares[0] & shares[1]


def test_row_table_holds_the_rows(tiny_digits):
    rows, _ = parse_manifest(tiny_digits)
    table = RowTable.of(iter(rows))
    assert len(table) == len(rows) == 80
    assert list(table) == rows
    assert table[-1] == rows[-1] and table.present() == ["audio", "image", "text"]
    picked = table.select([5, 0, 79])
    assert [r.row for r in picked] == [rows[5].row, rows[0].row, rows[79].row]
    assert picked[2].media == rows[79].media and picked[1].label == rows[0].label
    assert [r.row for r in picked + table.select([1])] == [6, 1, 80, 2]
    with pytest.raises(IndexError):
        table[80]


def test_video_goes_through_the_decoder_cache_and_collate(tmp_path):
    from tests.helpers.clips import BURST, FRAMES, write_clip

    write_clip(tmp_path / "clip.mpg")
    plain = MediaDecoder(1, 8000, 8000, video_size=16, video_frames=40)
    cached = MediaDecoder(1, 8000, 8000, video_size=16, video_frames=40, cache=DiskCache(tmp_path / "cache"))
    frames = plain.load(str(tmp_path / "clip.mpg"), "video")
    assert frames.shape == (40, 16, 16) and frames.dtype == torch.uint8
    assert frames[FRAMES:].eq(0).all()  # padded after the clip's 30 frames
    bright = frames[: FRAMES].float().mean(dim=(1, 2))
    assert bright[BURST.start + 1] > bright[0] + 20  # the white mouth box of the burst frames
    for _ in range(2):
        assert torch.equal(cached.load(str(tmp_path / "clip.mpg"), "video"), frames)
    collate = Collate(["video"], None, 8, (1, 8, 8), 8000, video_shape=(40, 16, 16))
    batch = collate([{"video": frames, "label": 0, "row": 1}, {"label": 1, "row": 2}])
    assert batch["video"].shape == (2, 40, 16, 16) and batch["mask"]["video"].tolist() == [True, False]
    assert np.count_nonzero(batch["video"][1].numpy()) == 0
