"""Property-based tests: any malformed manifest ends in ManifestError (on_error=raise) or a skip report
(on_error=skip) that names exactly the bad rows; never another exception, never a hang.

Each generated manifest is a CSV or JSONL file whose cells point at a pool of good and hostile files
(missing, empty, truncated, random bytes, directories, device files, FIFOs, dangling symlinks, NUL bytes in
paths, decompression bombs, absurd sample rates), by absolute or relative path. An oracle computes which
rows must be reported, which must pass, and which (truncated files) may go either way.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import struct
import wave
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fusion.data.datamodule import ManifestDataModule
from fusion.data.manifest import ManifestError

GOOD, BAD, MAYBE = "good", "bad", "maybe"
# media reference kind -> (modality, verdict)
MEDIA_KINDS = {
    "image_ok": ("image", GOOD), "audio_ok": ("audio", GOOD),
    "image_truncated": ("image", MAYBE), "audio_truncated": ("audio", MAYBE),
    "image_garbage": ("image", BAD), "audio_garbage": ("audio", BAD),
    "missing": (None, BAD), "empty_file": (None, BAD), "directory": (None, BAD),
    "dev_null": (None, BAD), "dev_zero": (None, BAD), "fifo": (None, BAD), "dangling_link": (None, BAD),
    "link_to_dev_zero": (None, BAD), "nul_in_path": (None, BAD), "very_long_path": (None, BAD),
    "image_bomb": ("image", BAD), "audio_absurd_rate": ("audio", BAD), "audio_no_samples": ("audio", BAD),
    "image_as_audio": ("audio", BAD), "audio_as_image": ("image", BAD),
}
if os.geteuid() != 0:  # root reads everything, so an unreadable file can only be made for other users
    MEDIA_KINDS["unreadable"] = (None, BAD)


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (followed by a tiny IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def wav_bytes(rate: int, frames: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * frames)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pool(tiny_digits, tmp_path_factory) -> Path:
    """A folder with one file (or special entry) per MEDIA_KINDS key, plus the manifests' folder `m/`."""
    root = tmp_path_factory.mktemp("hostile")
    png = (tiny_digits.parent / "images/00000.png").read_bytes()
    wav = (tiny_digits.parent / "audio/00000.wav").read_bytes()
    (root / "image_ok.png").write_bytes(png)
    (root / "audio_ok.wav").write_bytes(wav)
    (root / "image_truncated.png").write_bytes(png[: len(png) * 2 // 3])
    (root / "audio_truncated.wav").write_bytes(wav[: len(wav) // 2])
    (root / "image_garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (root / "audio_garbage.wav").write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt " + os.urandom(64))
    (root / "empty_file.png").write_bytes(b"")
    (root / "directory").mkdir()
    os.mkfifo(root / "fifo.wav")
    os.symlink(root / "nowhere.png", root / "dangling_link.png")
    os.symlink("/dev/zero", root / "link_to_dev_zero.wav")
    (root / "image_bomb.png").write_bytes(png_header_claiming(60_000, 60_000))
    (root / "audio_absurd_rate.wav").write_bytes(wav_bytes(2_000_000_000, 400))
    (root / "audio_no_samples.wav").write_bytes(wav_bytes(8000, 0))
    (root / "unreadable.png").write_bytes(png)
    (root / "unreadable.png").chmod(0)
    (root / "m").mkdir()
    return root


def media_path(pool: Path, kind: str, absolute: bool) -> str:
    special = {"dev_null": "/dev/null", "dev_zero": "/dev/zero", "nul_in_path": str(pool / "image_ok.png") + "\0x",
               "very_long_path": str(pool / ("x" * 5000 + ".png")), "missing": str(pool / "missing.png"),
               "directory": str(pool / "directory"), "fifo": str(pool / "fifo.wav"),
               "image_as_audio": str(pool / "image_ok.png"), "audio_as_image": str(pool / "audio_ok.wav")}
    path = special.get(kind) or next(str(p) for p in pool.iterdir() if p.name.split(".")[0] == kind)
    if absolute or not path.startswith(str(pool)):
        return path
    return os.path.relpath(path, pool / "m")  # relative to the manifest's folder: "../<name>"


CSV_FIELD_LIMIT = csv.field_size_limit()  # a longer CSV cell is reported as unparseable
unicode = st.characters(blacklist_categories=("Cs",))  # anything a UTF-8 file can hold
labels = st.one_of(st.sampled_from(["0", "1", "7", "cat", "dog"]), st.just(""), st.just("   "),
                   st.text(unicode, min_size=1, max_size=30), st.just("9" * 400), st.just("²"), st.just("-3"))
texts = st.one_of(st.just(""), st.text(unicode, max_size=60), st.just("x" * 200_000), st.just("comma, \"quote\"\nnew\x0cline\u2028"))


@st.composite
def good_rows(draw, pool: Path) -> dict:
    image, audio = draw(st.sampled_from([("image_ok", None), (None, "audio_ok"), ("image_ok", "audio_ok"), (None, None)]))
    return {"label": draw(st.sampled_from(["0", "1", "7"])), "split": draw(st.sampled_from(["train", "train", "test"])),
            "image": (image, draw(st.booleans())), "audio": (audio, draw(st.booleans())),
            "text": draw(st.sampled_from(["seven", "a, b", 'say "hi"\nnow', "tab\tand\x0cfeed\u2028sep"]))}


@st.composite
def rows(draw, pool: Path) -> dict:
    if draw(st.integers(0, 3)) > 0:  # three rows in four are good: enough manifests validate, or skip to valid
        return draw(good_rows(pool))
    row = {"label": draw(labels), "split": draw(st.sampled_from(["train", "val", "test", "TEST ", "bogus", None]))}
    for modality in ("image", "audio"):
        kinds = [k for k, (m, _) in MEDIA_KINDS.items() if m in (None, modality)]
        kind = draw(st.one_of(st.none(), st.sampled_from(kinds)))
        row[modality] = (kind, draw(st.booleans()))
    row["text"] = draw(texts)
    return row


def verdict(row: dict, split_column: bool, fmt: str) -> str:
    """GOOD (must load), BAD (must be reported) or MAYBE (truncated file: either) for one row."""
    outcomes = [BAD] if fmt == "csv" and len(row["text"]) > CSV_FIELD_LIMIT else []
    if not row["label"].strip() or (split_column and (row["split"] or "").strip().lower() not in ("train", "val", "test")):
        outcomes.append(BAD)
    present = [MEDIA_KINDS[kind][1] for kind, _ in (row["image"], row["audio"]) if kind is not None]
    if not present and not row["text"].strip():
        outcomes.append(BAD)
    outcomes += present
    return BAD if BAD in outcomes else MAYBE if MAYBE in outcomes else GOOD


def written_cells(pool: Path, row: dict, columns: list[str]) -> list[str]:
    cells = {"label": row["label"], "split": row["split"] or "", "text": row["text"]}
    for modality in ("image", "audio"):
        kind, absolute = row[modality]
        cells[modality] = "" if kind is None else media_path(pool, kind, absolute)
    return [cells[c] for c in columns]


def write_manifest(pool: Path, drawn: list[dict], fmt: str, columns: list[str], mangle: str) -> Path:
    records = [dict(zip(columns, written_cells(pool, row, columns), strict=True)) for row in drawn]
    path = pool / "m" / f"manifest.{fmt}"
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns + (columns[:1] if mangle == "duplicate_column" else []))
        writer.writerows([[r[c] for c in columns] + (["x"] if mangle == "duplicate_column" else []) for r in records])
        text = buffer.getvalue()
    data = text.encode()
    if mangle == "latin1":
        data = data + "caf\xe9\n".encode("latin-1")
    elif mangle == "nul":
        data = data[: len(data) // 2] + b"\0" + data[len(data) // 2 :]
    elif mangle == "utf16":
        data = text.encode("utf-16")
    path.write_bytes(data)
    return path


@contextmanager
def no_hang(seconds: int):
    def fail(signum, frame):
        raise AssertionError(f"validation hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def manifests(draw, pool: Path):
    drawn = draw(st.lists(rows(pool), min_size=1, max_size=10))
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    columns = ["label", "image", "audio", "text"]
    if draw(st.booleans()):
        columns.insert(0, "split")
    drop = draw(st.sampled_from([None] * 8 + ["label", "image", "text"]))
    if drop:
        columns.remove(drop)
    mangle = draw(st.sampled_from(["none"] * 12 + ["latin1", "nul", "utf16"] + (["duplicate_column"] if fmt == "csv" else [])))
    return drawn, fmt, columns, mangle


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_hostile_manifests_end_in_manifest_error_or_skip_report(pool, on_error):
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(manifests(pool))
    def check(case):
        drawn, fmt, columns, mangle = case
        for modality in ("image", "audio"):  # a dropped column drops its cells from the oracle too
            if modality not in columns:
                for row in drawn:
                    row[modality] = (None, False)
        if "text" not in columns:
            for row in drawn:
                row["text"] = ""
        manifest = write_manifest(pool, drawn, fmt, columns, mangle)
        run_dir = pool / "m" / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        # a CSV line whose cells are all blank is an empty line: skipped, and not counted as a row
        blank = [fmt == "csv" and all(not c.strip() for c in written_cells(pool, r, columns)) for r in drawn]
        drawn = [r for r, b in zip(drawn, blank, strict=True) if not b]
        verdicts = [verdict(r, "split" in columns, fmt) for r in drawn]
        file_broken = mangle != "none" or "label" not in columns
        dm = ManifestDataModule(str(manifest), on_error=on_error, batch_size=4, text_model=None)
        with no_hang(120):
            try:
                dm.prepare(run_dir)
            except ManifestError as err:
                reported = {p.row for p in err.problems if p.row > 0}
                event("whole-file error" if any(p.row == 0 for p in err.problems) else "row errors")
                whole_file = any(p.row == 0 for p in err.problems)
                assert whole_file or reported, str(err)
                if not whole_file and on_error == "raise":
                    must = {i + 1 for i, v in enumerate(verdicts) if v == BAD}
                    never = {i + 1 for i, v in enumerate(verdicts) if v == GOOD}
                    assert must <= reported and not (reported & never), (verdicts, str(err))
                assert str(manifest) in str(err)
                return
        assert not file_broken, f"{mangle} / columns {columns} should not validate"
        event("validated")
        kept = sorted(r.row for split in dm.datasets.values() for r in split.rows)
        assert {i + 1 for i, v in enumerate(verdicts) if v == GOOD} <= set(kept)
        assert not {i + 1 for i, v in enumerate(verdicts) if v == BAD} & set(kept)
        if on_error == "skip" and len(kept) < len(drawn):
            report = list(csv.DictReader(open(run_dir / "skipped_rows.csv")))
            assert {int(r["row"]) for r in report} == set(range(1, len(drawn) + 1)) - set(kept)
        else:
            assert len(kept) == len(drawn)
        batch = dm.collate([dm.datasets["train"][0]])
        assert batch["label"].shape == (1,)

    check()


def test_relative_and_absolute_paths_reach_the_same_files(pool):
    rows_ = [{"split": s, "label": "1", "image": media_path(pool, "image_ok", absolute), "audio":
              media_path(pool, "audio_ok", not absolute), "text": ""}
             for s, absolute in (("train", True), ("train", False), ("test", True))]
    manifest = pool / "m" / "paths.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    assert rows_[1]["image"].startswith("..") and rows_[0]["image"].startswith("/")
    dm = ManifestDataModule(str(manifest), batch_size=2)
    dm.prepare(None)
    paths = [r.media for r in dm.datasets["train"].rows + dm.datasets["val"].rows + dm.datasets["test"].rows]
    assert {os.path.realpath(p["image"]) for p in paths} == {os.path.realpath(pool / "image_ok.png")}
    assert {os.path.realpath(p["audio"]) for p in paths} == {os.path.realpath(pool / "audio_ok.wav")}
