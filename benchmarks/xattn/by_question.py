"""Test accuracy of every grid-task run of a sweep per question kind (position, relation, spoken), as JSON.

    python benchmarks/xattn/by_question.py checkpoints/sweeps/xattn > by_question.json

Each run folder `<sweep>/grid*/<recipe>/seed<k>/` predicts the test rows of the manifest it was trained on
(`data.manifest` of its config.yaml) with `fusion.load`; rows are joined to the manifest's `question` column.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

import fusion


def by_question(run_dir: Path) -> dict[str, float]:
    manifest = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["manifest"])
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    test = rows[rows["split"] == "test"].reset_index(drop=True)
    model = fusion.load(run_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    predicted = model.predict(test.drop(columns=["split"]), base=manifest.parent, batch_size=256)
    correct = predicted["pred"].to_numpy() == test["label"].to_numpy()
    report = {kind: round(100 * float(correct[(test["question"] == kind).to_numpy()].mean()), 2)
              for kind in sorted(test["question"].unique())}
    return {"all": round(100 * float(correct.mean()), 2), **report, "rows": len(test)}


def main() -> None:
    sweep = Path(sys.argv[1])
    runs = sorted(p.parent for p in sweep.glob("grid*/*/seed*/metrics.json"))
    print(json.dumps({str(run.relative_to(sweep)): by_question(run) for run in runs}, indent=1))


if __name__ == "__main__":
    main()
