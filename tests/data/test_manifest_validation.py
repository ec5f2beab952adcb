"""Manifest validation: every kind of bad row is reported with row, column and file, all at once."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fusion.data.datamodule import ManifestDataModule
from fusion.data.manifest import ManifestError


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = ["split", "label", "image", "audio", "text"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c, "") for c in columns})
    return path


@pytest.fixture
def media(tiny_digits, tmp_path) -> dict[str, Path]:
    """One good image, one good wav, and broken files next to a manifest folder."""
    root = tiny_digits.parent
    (tmp_path / "good.png").write_bytes((root / "images/00000.png").read_bytes())
    shutil.copy(root / "audio/00000.wav", tmp_path / "good.wav")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good_png = (root / "images/00001.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (tmp_path / "noise.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    (tmp_path / "a_directory").mkdir()
    return {p.name: p for p in tmp_path.iterdir()}


def good_row(**kw) -> dict:
    return {"split": "train", "label": "3", "image": "good.png", "audio": "good.wav", "text": "three"} | kw


def validate(manifest: Path, **kw) -> ManifestDataModule:
    dm = ManifestDataModule(str(manifest), **kw)
    dm.prepare(manifest.parent / "run")
    return dm


def test_every_problem_is_listed_with_row_column_and_file(media, tmp_path):
    rows = [
        good_row(), good_row(split="test"),
        good_row(image="missing.png"),          # 3: missing file
        good_row(image="corrupt.png"),          # 4: unreadable image
        good_row(image="truncated.png"),        # 5: truncated image
        good_row(audio="noise.wav"),            # 6: corrupt audio
        good_row(split="validation"),           # 7: unknown split
        good_row(label=""),                     # 8: empty label
        good_row(image="", audio="", text=""),  # 9: no modality at all
        good_row(image="a_directory"),          # 10: a directory
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as info:
        validate(manifest)
    message = str(info.value)
    expected = [
        ("row 3, column 'image'", "missing.png", "does not exist"),
        ("row 4, column 'image'", "corrupt.png", "cannot decode image"),
        ("row 5, column 'image'", "truncated.png", "cannot decode image"),
        ("row 6, column 'audio'", "noise.wav", "cannot decode audio"),
        ("row 7, column 'split'", "", "unknown split 'validation'"),
        ("row 8, column 'label'", "", "empty label"),
        ("row 9", "", "no modality at all"),
        ("row 10, column 'image'", "a_directory", "is a directory"),
    ]
    for where, file, what in expected:
        line = next((ln for ln in message.splitlines() if where in ln), None)
        assert line is not None, f"{where} not reported:\n{message}"
        assert file in line and what in line, line
    assert len(info.value.problems) == len(expected)
    assert "row 1," not in message and "row 2," not in message


def test_skip_mode_skips_bad_rows_and_writes_a_report(media, tmp_path):
    rows = [good_row(), good_row(split="test"), good_row(image="missing.png"), good_row(label=""), good_row(split="val")]
    manifest = write_csv(tmp_path / "m.csv", rows)
    dm = validate(manifest, on_error="skip")
    assert [r.row for r in dm.datasets["train"].rows] == [1]
    assert [r.row for r in dm.datasets["test"].rows] == [2]
    report = list(csv.DictReader(open(tmp_path / "run" / "skipped_rows.csv")))
    assert [(r["row"], r["column"]) for r in report] == [("3", "image"), ("4", "label")]
    assert report[0]["path"].endswith("missing.png")


def test_jsonl_manifest_with_partial_modalities_and_absolute_paths(media, tmp_path):
    lines = [
        {"split": "train", "label": "a", "image": str(media["good.png"])},
        {"split": "train", "label": "b", "audio": "good.wav", "text": "bee"},
        {"split": "val", "label": "a", "text": "ay"},
        {"split": "test", "label": "b", "image": "good.png", "audio": None},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    dm = validate(manifest)
    assert dm.spec == {"modalities": ["audio", "image", "text"], "num_classes": 2, "classes": ["a", "b"]}
    batch = dm.collate([dm.datasets["train"][0], dm.datasets["train"][1]])
    assert batch["mask"]["image"].tolist() == [True, False]
    assert batch["mask"]["audio"].tolist() == [False, True]
    assert batch["mask"]["text"].tolist() == [False, True]
    assert batch["image"][1].abs().sum() == 0  # placeholder of the absent image


def test_bad_json_line_and_wrong_cell_count_are_reported(media, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"label": "a", "text": "x", "split": "train"}\n{not json}\n[1, 2]\n{"label": "a", "text": "y", "split": "test"}\n')
    with pytest.raises(ManifestError, match=r"row 2, column 'json': invalid JSON[\s\S]*row 3, column 'json': a row must be a JSON object"):
        validate(manifest)
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text("label,text,split\na,x,train\nb,y\na,z,test\n")
    with pytest.raises(ManifestError, match=r"row 2, column 'csv': has 2 cells, header has 3"):
        validate(csv_manifest)


def test_missing_label_column_and_missing_manifest(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("text,split\nx,train\n")
    with pytest.raises(ManifestError, match="no 'label' column"):
        validate(manifest)
    with pytest.raises(ManifestError, match="does not exist"):
        validate(tmp_path / "nope.csv")


def test_not_utf8_manifest_is_reported(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"label,text\n" + "caf\xe9,x\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not valid UTF-8"):
        validate(manifest)


def test_seeded_split_when_no_split_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("label,text\n" + "".join(f"{i % 3},word {i}\n" for i in range(50)))
    a, b = validate(manifest, test_fraction=0.2, val_fraction=0.1), validate(manifest, test_fraction=0.2, val_fraction=0.1)
    sizes = {s: len(a.datasets[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 36, "val": 4, "test": 10}
    assert [r.row for r in a.datasets["test"].rows] == [r.row for r in b.datasets["test"].rows]
    assert a.spec["classes"] == ["0", "1", "2"]


def test_a_video_column_is_refused_up_front_for_classification(media, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(f"split,label,image,video\ntrain,1,{media['good.png']},v.mp4\ntest,1,{media['good.png']},\n")
    with pytest.raises(ManifestError, match="column 'video'.*no video tower.*data.modalities") as err:
        ManifestDataModule(manifest=str(path)).prepare()
    assert "recipe=sync" in str(err.value)
