"""The Python example of README.md's `## Use a trained model` runs as written, on the tiny digits set."""

from __future__ import annotations

import re

import pandas as pd

from tests.helpers.recipes import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold one Python example"
    return blocks[0]


def test_readme_python_example_runs(tiny_digits, new_manifest, tmp_path, monkeypatch, capsys):
    rows = pd.read_csv(tiny_digits, keep_default_na=False)
    first = rows[(rows["split"] == "test") & (rows["image"] != "") & (rows["audio"] != "")].iloc[0]
    code = readme_example()
    for placeholder, value in {"my/manifest.csv": tiny_digits, "new.csv": new_manifest,
                               "a.png": tiny_digits.parent / first["image"],
                               "b.wav": tiny_digits.parent / first["audio"]}.items():
        assert f'"{placeholder}"' in code
        code = code.replace(f'"{placeholder}"', repr(str(value)))
    monkeypatch.chdir(tmp_path)  # fit's run folder: checkpoints/progressive/<time> under the working folder
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "checkpoints/progressive/" in printed and "pred" in printed
    assert list((tmp_path / "checkpoints" / "progressive").iterdir())
