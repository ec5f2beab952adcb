"""One grammar: every config composes, every command in README and docs parses and composes, user errors end
commands with their message and no traceback."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from fusion.commands.app import compose_config
from tests.helpers.recipes import RECIPES, REPO

COMMANDS = {"train.py": "config", "evaluate.py": "evaluate", "predict.py": "predict", "export.py": "export",
            "fusion.commands.manifest": "manifest", "fusion-train": "config", "fusion-evaluate": "evaluate",
            "fusion-predict": "predict", "fusion-export": "export", "fusion-manifest": "manifest"}
ROOT_CONFIGS = sorted(p.stem for p in RECIPES.glob("*.yaml"))
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))] + sorted((REPO / "benchmarks").rglob("README.md"))


def without_command_substitutions(line: str) -> str:
    """`$(...)` (balanced parentheses) replaced by a placeholder value."""
    while "$(" in line:
        start = line.index("$(")
        depth, end = 0, start + 1
        for end in range(start + 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            if depth == 0:
                break
        line = line[:start] + "x" + line[end + 1:]
    return line


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, config name, overrides) of every command line in the ```bash blocks of README and docs."""
    found = []
    for doc in DOCS:
        if not doc.is_file():
            continue
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                line = without_command_substitutions(line)
                line = re.sub(r"\$\{?[A-Za-z_]\w*\}?", "x", line)  # shell variables
                try:
                    words = shlex.split(line)
                except ValueError:
                    continue
                for index, word in enumerate(words):
                    name = Path(word).name if word.endswith(".py") else word
                    if name in COMMANDS:
                        found.append((doc.name, COMMANDS[name], words[index + 1:]))
                        break
    return found


def test_docs_name_commands():
    assert len(documented_commands()) >= 5


def test_documented_commands_have_no_angle_bracket_placeholders():
    """`run=checkpoints/x/<run>` is a redirection in a shell; docs use shell variables ($RUN) instead."""
    bad = [(doc, " ".join(words)) for doc, _, words in documented_commands() if re.search(r"<[^>]*>", " ".join(words))]
    assert not bad, bad


@pytest.mark.parametrize("config_name", ROOT_CONFIGS)
def test_every_root_config_composes(config_name):
    cfg = compose_config(config_name, ["run=some/run"] if config_name in ("evaluate", "predict", "export") else [])
    assert cfg is not None


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml")))
@pytest.mark.parametrize("logger", sorted(p.stem for p in (RECIPES / "logger").glob("*.yaml")))
def test_every_recipe_composes_with_every_logger(recipe, logger):
    cfg = compose_config("config", [f"recipe={recipe}", f"logger={logger}", "run_dir=/tmp/run"])
    assert cfg.recipe_name == recipe
    assert cfg.logger._target_.startswith("lightning.pytorch.loggers.")


@pytest.mark.parametrize(("doc", "config_name", "overrides"), documented_commands(),
                         ids=lambda value: value if isinstance(value, str) else " ".join(value)[:60])
def test_documented_command_parses_and_composes(doc, config_name, overrides):
    overrides = [word for word in overrides if not word.startswith("-")]  # -m (multirun), --help
    parsed = OverridesParser.create().parse_overrides(overrides)
    if any(override.is_sweep_override() for override in parsed):
        return  # a multirun sweep: the parse above is the check
    if config_name not in ROOT_CONFIGS:
        pytest.fail(f"{doc} uses a command whose config recipes/{config_name}.yaml does not exist")
    compose_config(config_name, overrides)


def test_metric_names_use_only_safe_characters():
    import torch

    from fusion.alignment.retrieval import recall_at_k

    names = recall_at_k(torch.tensor([1, 2, 3]), (1, 5))
    assert all(re.fullmatch(r"[A-Za-z0-9_\-/.]+", name) for name in names)


def test_bad_manifest_ends_train_with_its_message_and_no_traceback(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("split,label,image\ntrain,1,missing.png\n")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), f"data.manifest={manifest}",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "row 1, column 'image'" in output and "missing.png" in output
    assert "Traceback" not in output and "Error executing job" not in output


def test_missing_checkpoint_ends_evaluate_with_its_message(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"run={tmp_path / 'nothing'}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert str(tmp_path / "nothing") in output and "Traceback" not in output
