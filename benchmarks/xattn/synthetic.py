"""The grid task without encoders: does the cross-attention fusion itself learn position and relation questions?

    python benchmarks/xattn/synthetic.py --steps 3000

Image tokens: an 8x8 map whose four 4x4 quadrants carry the random code of four different digits (plus noise);
text: four word vectors, a position question ("pos", row, column, end) or a relation question ("rel", one of
left/right/above/below, the digit, end); label: the digit meant. The fusion (hidden 64, 2 blocks, 4 heads) trains
with AdamW on fresh batches of 64; every 500 steps prints the accuracy on 1,000 fixed questions of each kind.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fusion.fusions.cross_attention import CrossAttentionFusion

D = 16  # size of the digit codes and word vectors
POS, REL, END, ROW, COL, LEFT, RIGHT, ABOVE, BELOW = 16, 17, 19, 10, 12, 12, 13, 14, 15  # word ids (0-9: digits)


def sample(b: int, codes: torch.Tensor, words: torch.Tensor, gen: torch.Generator):
    """Image tokens (B, 64, D), text tokens (B, 4, D), labels (B,), is-relation (B,)."""
    digits = torch.argsort(torch.rand(b, 10, generator=gen), dim=1)[:, :4]  # (B, 4): top left, top right, bottom left, ...
    quadrant = (torch.arange(8)[:, None] // 4 * 2 + torch.arange(8)[None, :] // 4).flatten()  # (64,)
    image = codes[digits[:, quadrant]] + 0.3 * torch.randn(b, 64, D, generator=gen)
    target = torch.randint(0, 4, (b,), generator=gen)
    relation = torch.rand(b, generator=gen) < 0.5
    vertical = torch.rand(b, generator=gen) < 0.5
    reference = torch.where(vertical, target ^ 2, target ^ 1)  # the neighbour in its column or row
    row, col = target // 2, target % 2
    word = torch.where(vertical, torch.where(row > reference // 2, BELOW, ABOVE), torch.where(col > reference % 2, RIGHT, LEFT))
    full = lambda v: torch.full_like(target, v)  # noqa: E731
    asked = torch.where(relation[:, None], torch.stack([full(REL), word, digits.gather(1, reference[:, None])[:, 0], full(END)], 1),
                        torch.stack([full(POS), ROW + row, COL + col, full(END)], 1))
    return image, words[asked], digits.gather(1, target[:, None])[:, 0], relation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = torch.Generator().manual_seed(0)
    codes, words = torch.randn(10, D, generator=table), torch.randn(20, D, generator=table)
    torch.manual_seed(0)
    fusion = CrossAttentionFusion({"image": D, "text": D}, 10, hidden_dim=64, num_layers=args.layers, num_heads=4, dropout=0.0)
    optimizer = torch.optim.AdamW(fusion.parameters(), lr=args.lr, weight_decay=1e-4)
    present = lambda b: {"image": torch.ones(b, dtype=torch.bool), "text": torch.ones(b, dtype=torch.bool)}  # noqa: E731
    gen, test = torch.Generator().manual_seed(1), sample(1000, codes, words, torch.Generator().manual_seed(2))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        image, text, labels, _ = sample(64, codes, words, gen)
        result = fusion.fuse({"image": image, "text": text}, present(64))
        loss = F.cross_entropy(result.logits, labels) + result.aux_loss
        loss = loss + sum(0.5 * F.cross_entropy(v, labels) for v in result.unimodal_logits.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            fusion.eval()
            with torch.no_grad():
                right = fusion({"image": test[0], "text": test[1]}, present(1000)).argmax(1) == test[2]
            fusion.train()
            print(f"step {step}: position {right[~test[3]].float().mean():.3f}, relation {right[test[3]].float().mean():.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
