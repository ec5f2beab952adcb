"""The disk cache of decoded media: exact values back, keys that follow content and settings, and no torn entry
ever read, even when a writer is killed mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms

from fusion.data.decoder import MediaDecoder
from fusion.data.disk_cache import DiskCache
from fusion.files import process_alive

REPO = Path(__file__).resolve().parents[2]


def decoder(cache: DiskCache | None, size: int = 16, channels: int = 1) -> MediaDecoder:
    return MediaDecoder(channels, 8000, 4000, image_resize=transforms.Resize((size, size)),
                        image_resize_key=f"resize={size}", cache=cache)


@pytest.fixture
def files(tiny_digits) -> dict[str, str]:
    root = tiny_digits.parent
    return {"image": str(root / "images/00003.png"), "audio": str(root / "audio/00003.wav")}


def test_cached_values_equal_the_decoded_ones_exactly(files, tmp_path):
    cache = DiskCache(tmp_path / "cache")
    plain, cached = decoder(None), decoder(cache)
    for modality, path in files.items():
        expected = plain.load(path, modality)
        first, second = cached.load(path, modality), cached.load(path, modality)  # miss (writes), then hit
        for value in (first, second):
            if modality == "image":
                assert value.mode == "L" and value.size == (16, 16)
                assert np.array_equal(np.asarray(value), np.asarray(expected))
            else:
                assert value.shape == (4000,) and value.dtype == torch.float32
                assert torch.equal(value, expected)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2


def test_keys_follow_content_and_settings(files, tmp_path):
    cache = DiskCache(tmp_path / "cache")
    data = Path(files["image"]).read_bytes()
    key = DiskCache.key(data, decoder(cache).settings("image"))
    assert key == DiskCache.key(bytes(data), decoder(cache).settings("image"))  # same content, same entry
    assert key != DiskCache.key(data + b"\0", decoder(cache).settings("image"))
    assert key != DiskCache.key(data, decoder(cache, size=20).settings("image"))
    assert key != DiskCache.key(data, decoder(cache, channels=3).settings("image"))
    decoder(cache).load(files["image"], "image")
    decoder(cache, size=20).load(files["image"], "image")
    shapes = sorted(np.load(p).shape for p in (tmp_path / "cache").rglob("*.npy"))
    assert shapes == [(16, 16, 1), (20, 20, 1)]


def test_a_torn_entry_under_the_final_name_is_rewritten(files, tmp_path):
    cache = DiskCache(tmp_path / "cache")
    expected = decoder(None).load(files["audio"], "audio")
    decoder(cache).load(files["audio"], "audio")
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # e.g. a power loss before writeback
    assert torch.equal(decoder(cache).load(files["audio"], "audio"), expected)
    assert entry.stat().st_size > 16000  # rewritten whole (4000 float32 samples + header)


WRITER = textwrap.dedent("""
    import sys, time
    from collections import defaultdict
    from pathlib import Path
    import numpy as np
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from fusion.data import disk_cache
    from fusion.data.dataset import ManifestDataset
    from fusion.data.decoder import MediaDecoder
    from fusion.data.manifest import parse_manifest

    ready, after = Path(sys.argv[3]), int(sys.argv[4])
    real_save, writes = np.save, []

    def save(f, array, allow_pickle=False):  # the entry after `after` complete ones stops half-way, forever
        if len(writes) == after:
            f.write(b"\\x93NUMPY" + b"\\0" * 40)
            f.flush()
            ready.write_text("writing")
            time.sleep(600)
        writes.append(1)
        real_save(f, array, allow_pickle=allow_pickle)

    disk_cache.np.save = save
    rows, _ = parse_manifest(sys.argv[1])
    decoder = MediaDecoder(1, 8000, 8000, image_resize=transforms.Resize((32, 32)),
                           image_resize_key="resize=None/crop=32/bilinear", cache=disk_cache.DiskCache(sys.argv[2]))
    dataset = ManifestDataset(rows, defaultdict(int), ["audio", "image"], transforms.ToTensor(), 1, 8000, 8000,
                              cache=False, decoder=decoder)
    for item in DataLoader(dataset, batch_size=None, num_workers=1):  # the worker is killed mid-write
        pass
""")


def test_killing_a_run_mid_write_never_exposes_a_partial_entry(tiny_digits, tmp_path):
    """A DataLoader worker filling the cache is killed (SIGKILL, with its parent) while it writes an entry; the
    next run (the data module, with the same cache settings) reads only whole entries and gets exactly the
    decoded values."""
    cache_dir, ready = tmp_path / "cache", tmp_path / "ready"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_digits), str(cache_dir), str(ready), "10"],
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the writer never reached its 11th cache entry"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its DataLoader worker
        proc.wait()
    temporary = list(cache_dir.rglob("*.tmp"))
    assert len(temporary) == 1 and len(list(cache_dir.rglob("*.npy"))) == 10  # the torn write is only a temp file
    writer = int(temporary[0].name.split(".")[-3])
    deadline = time.monotonic() + 10
    while process_alive(writer) and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously
        time.sleep(0.05)

    from fusion.data.datamodule import ManifestDataModule

    resumed = ManifestDataModule(str(tiny_digits), cache="disk", cache_dir=str(cache_dir), num_workers=0, augment=False)
    resumed.prepare()  # sweeps temporary files of dead writers
    assert not list(cache_dir.rglob("*.tmp"))
    plain = ManifestDataModule(str(tiny_digits), cache="none", num_workers=0, augment=False)
    plain.prepare()
    for split in ("train", "val", "test"):
        for i in range(len(plain.datasets[split])):
            a, b = resumed.datasets[split][i], plain.datasets[split][i]
            assert a.keys() == b.keys()
            for m in ("image", "audio"):
                if m in a:
                    assert torch.equal(a[m], b[m]), (split, i, m)
    files = {path for split in plain.datasets.values() for row in split.rows for m, path in row.media.items() if m != "text"}
    assert len(list(cache_dir.rglob("*.npy"))) == len(files)  # the writer's 10 entries were read, not duplicated


def test_file_key_read_in_pieces_equals_the_key_of_the_whole_bytes(tmp_path):
    path = tmp_path / "clip.bin"
    path.write_bytes(bytes(range(256)) * 41)  # 10,496 bytes: several pieces of 1,000 and a short last one
    assert DiskCache.file_key(path, "video/x", piece_bytes=1000) == DiskCache.key(path.read_bytes(), "video/x")
    assert DiskCache.file_key(path, "video/y") != DiskCache.key(path.read_bytes(), "video/x")
