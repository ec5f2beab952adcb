"""Markdown tables of an alignment run's metrics.json: retrieval per direction, cosines, zero-shot.

    python benchmarks/alignment/report.py checkpoints/clip/builtin [--baseline checkpoints/late/audio_only]

With ``--baseline`` (a classification run folder), its ``test/acc`` is printed next to the class-level
R1 of every direction, e.g. to compare audio->image retrieval with a supervised audio-only classifier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_metrics(run_dir: Path, name: str = "metrics.json") -> dict[str, float]:
    path = run_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} in '{run_dir}'")
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="run folder of recipe=clip")
    parser.add_argument("--baseline", type=Path, default=None, help="classification run folder (test/acc)")
    parser.add_argument("--metrics-file", default="metrics.json", help="e.g. metrics_partial.json")
    args = parser.parse_args()
    m = load_metrics(args.run, args.metrics_file)
    directions = sorted(
        {k[len("test/") :].split("/")[0] for k in m if "_to_" in k and not k.startswith("test/mean")}
    )
    print("| direction | R1 | R5 | R10 | median rank | class R1 | class R5 | class median rank |")
    print("|---|---|---|---|---|---|---|---|")
    for d in directions:
        v = {key.split("/")[-1]: value for key, value in m.items() if key.startswith(f"test/{d}/")}
        print(
            f"| {d.replace('_to_', ' → ')} | {v['R1']:.3f} | {v['R5']:.3f} | {v['R10']:.3f} | "
            f"{v['median_rank']:.0f} | {v['class_R1']:.3f} | {v['class_R5']:.3f} | {v['class_median_rank']:.0f} |"
        )
    pairs = sorted({k[len("test/") :].split("/")[0] for k in m if k.endswith("/matched_cos")})
    print("\n| pair | matched cosine | unmatched cosine |\n|---|---|---|")
    for p in pairs:
        print(
            f"| {p.replace('_', '–')} | {m[f'test/{p}/matched_cos']:.3f} | {m[f'test/{p}/unmatched_cos']:.3f} |"
        )
    zero_shot = sorted(k for k in m if "zero_shot" in k)
    if zero_shot:
        print("\n| zero-shot | accuracy |\n|---|---|")
        for k in zero_shot:
            print(f"| {k[len('test/') :]} | {m[k]:.3f} |")
    if args.baseline is not None:
        base = load_metrics(args.baseline)
        print(f"\nsupervised baseline ({args.baseline}): test/acc = {base['test/acc']:.3f}")
    print(f"\nfit_seconds: {m.get('fit_seconds')}")


if __name__ == "__main__":
    main()
