"""Up-front validation: header checks find missing, empty, garbage and truncated files, every bad row at once;
full decoding finds bad samples too; the parallel pass reports exactly what the serial one does."""

from __future__ import annotations

import csv
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from fusion.data import validation
from fusion.data.datamodule import ManifestDataModule
from fusion.data.dataset import RowDecodeError
from fusion.data.decoder import MediaDecoder
from fusion.data.manifest import ManifestError, parse_manifest
from fusion.data.row_table import RowTable


def wav_bytes(wave: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.fixture
def folder(tiny_digits, tmp_path) -> Path:
    """Good files and one of each kind of bad file."""
    root = tiny_digits.parent
    png = (root / "images/00000.png").read_bytes()
    wav = (root / "audio/00000.wav").read_bytes()
    (tmp_path / "good.png").write_bytes(png)
    (tmp_path / "good.wav").write_bytes(wav)
    (tmp_path / "truncated.png").write_bytes(png[: len(png) * 3 // 4])
    altered = bytearray(png)
    altered[png.index(b"IDAT") + 8] ^= 0xFF  # one byte of pixel data: the chunk's CRC no longer matches
    (tmp_path / "altered.png").write_bytes(bytes(altered))
    jpeg = io.BytesIO()
    Image.open(root / "images/00000.png").convert("RGB").save(jpeg, format="JPEG")
    (tmp_path / "good.jpg").write_bytes(jpeg.getvalue())
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[:-40])  # headers whole, the end of the scan cut
    (tmp_path / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    absurd = bytearray(wav)
    absurd[24:28] = struct.pack("<I", 2_000_000_000)  # the fmt chunk's sample rate
    (tmp_path / "absurd_rate.wav").write_bytes(bytes(absurd))
    (tmp_path / "empty.png").write_bytes(b"")
    nan = np.zeros(800, dtype=np.float32)
    nan[100] = np.nan
    (tmp_path / "nan.wav").write_bytes(wav_bytes(nan, subtype="FLOAT"))
    return tmp_path


def write_manifest(folder: Path, cells: list[tuple[str, str]]) -> Path:
    """One row per (image, audio) pair, rows 1 and 2 good (train, test), the rest as given (train)."""
    path = folder / "m.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "label", "image", "audio", "text"])
        writer.writerow(["train", "1", "good.png", "good.wav", "one"])
        writer.writerow(["test", "1", "good.jpg", "good.wav", "one"])
        for image, audio in cells:
            writer.writerow(["train", "2", image, audio, "two"])
    return path


BAD = [  # (image, audio) -> (column, file, what the message says)
    (("truncated.png", "good.wav"), ("image", "truncated.png", "cannot decode image")),
    (("altered.png", "good.wav"), ("image", "altered.png", "cannot decode image")),
    (("truncated.jpg", "good.wav"), ("image", "truncated.jpg", "no end-of-image marker")),
    (("good.png", "truncated.wav"), ("audio", "truncated.wav", "truncated WAV")),
    (("good.png", "garbage.wav"), ("audio", "garbage.wav", "cannot decode audio")),
    (("good.png", "absurd_rate.wav"), ("audio", "absurd_rate.wav", "implausible sample rate")),
    (("missing.png", "good.wav"), ("image", "missing.png", "does not exist")),
    (("empty.png", "good.wav"), ("image", "empty.png", "file is empty")),
]


def test_header_validation_names_every_bad_row_at_once(folder):
    manifest = write_manifest(folder, [cells for cells, _ in BAD])
    with pytest.raises(ManifestError) as info:
        ManifestDataModule(str(manifest), validate="header").prepare()
    problems = info.value.problems
    assert [(p.row, p.column) for p in problems] == [(i + 3, column) for i, (_, (column, _, _)) in enumerate(BAD)]
    lines = str(info.value).splitlines()
    for i, (_, (column, file, what)) in enumerate(BAD):
        line = next(ln for ln in lines if f"row {i + 3}, column '{column}'" in ln)
        assert file in line and what in line, line


def test_bad_samples_pass_the_header_check_and_fail_decoding(folder):
    manifest = write_manifest(folder, [("good.png", "nan.wav")])
    header = ManifestDataModule(str(manifest), validate="header", num_workers=0, cache="none", batch_size=8)
    header.prepare()  # the header of nan.wav is fine
    with pytest.raises(RowDecodeError, match=r"row 3, column 'audio', file '.*nan.wav': audio contains NaN.*validate=decode"):
        next(iter(header.train_dataloader()))
    with pytest.raises(ManifestError, match=r"row 3, column 'audio', file '.*nan.wav': audio contains NaN") as info:
        ManifestDataModule(str(manifest), validate="decode").prepare()
    assert [p.row for p in info.value.problems] == [3]


def test_parallel_validation_reports_what_the_serial_one_does(folder, monkeypatch):
    manifest = write_manifest(folder, [cells for cells, _ in BAD] * 3 + [("good.png", "good.wav")] * 10)
    rows, _ = parse_manifest(manifest)
    table = RowTable.of(rows)
    serial_rows, serial = validation.validate_media(table, "header", workers=1)
    monkeypatch.setattr(validation, "PARALLEL_FROM", 1)
    monkeypatch.setattr(validation, "CHUNK", 4)
    parallel_rows, parallel = validation.validate_media(table, "header", workers=2)
    assert parallel == serial and len(serial) == 3 * (len(BAD) - 2)  # missing and empty files fail parsing already
    assert [r.row for r in parallel_rows] == [r.row for r in serial_rows] == [1, 2] + list(range(3 + 3 * len(BAD), 13 + 3 * len(BAD)))


def test_header_validation_decodes_nothing_and_decode_validation_fills_the_cache(folder, monkeypatch, tmp_path):
    manifest = write_manifest(folder, [("good.png", "good.wav")] * 3)
    calls = []
    decode = MediaDecoder.decode
    monkeypatch.setattr(MediaDecoder, "decode", lambda self, *a: calls.append(a[0]) or decode(self, *a))
    ManifestDataModule(str(manifest), validate="header", cache="disk", cache_dir=str(tmp_path / "c1")).prepare()
    assert calls == [] and not (tmp_path / "c1").exists()
    ManifestDataModule(str(manifest), validate="decode", cache="disk", cache_dir=str(tmp_path / "c2")).prepare()
    assert sorted(Path(c).name for c in calls) == ["good.jpg", "good.png", "good.wav"]  # identical files: one entry
    assert len(list((tmp_path / "c2").rglob("*.npy"))) == 3
    calls.clear()
    ManifestDataModule(str(manifest), validate="decode", cache="disk", cache_dir=str(tmp_path / "c2")).prepare()
    assert calls == []  # a second run reads the entries


def test_truncated_video_is_caught_by_the_header_check(tmp_path):
    from fusion.data.media_checks import check_header
    from tests.helpers.clips import write_clip

    write_clip(tmp_path / "clip.mp4", container_format="mp4", video_codec="mpeg4", audio_codec="aac")
    assert check_header(str(tmp_path / "clip.mp4"), "video") is None
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) at the end is lost
    (tmp_path / "noise.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 4)
    for name in ("cut.mp4", "noise.mp4"):
        assert check_header(str(tmp_path / name), "video").startswith("cannot decode video ("), name
