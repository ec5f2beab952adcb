"""`predict.py attention_maps=N`: for the first N examples, the image with the attention of each word over its regions.

Needs a PyTorch model whose fusion attends over tokens (recipe=xattn, fusion/fusions/cross_attention.py) and an
image modality; the pictures come from fusion/eval/attention_maps.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fusion.errors import ConfigError
from fusion.eval.attention_maps import draw_attention, region_attention, word_spans
from fusion.inference.examples import NO_LABEL, batches, prepare
from fusion.inference.predictor import Predictor, TorchBackend, move


def check_attention_maps(predictor: Predictor) -> None:
    """Raises ConfigError unless `predictor` is a PyTorch cross-attention model with an image input."""
    backend = predictor.backend
    if not isinstance(backend, TorchBackend) or not backend.model.needs_tokens:
        raise ConfigError(f"attention_maps= needs a cross-attention model (recipe=xattn) run with PyTorch; '{predictor.folder}' "
                          f"is a {predictor.kind} model{'' if isinstance(backend, TorchBackend) else ' on ONNX Runtime'}")
    if "image" not in backend.model.modalities:
        raise ConfigError(f"attention_maps= draws attention over images; this model reads {backend.model.modalities}")


def write_attention_maps(predictor: Predictor, data: object, out: Path, count: int, batch_size: int = 64,
                         on_error: str = "raise", base: Path | None = None) -> list[Path]:
    """Writes `out/row<k>.png` for the first `count` rows of `data` that have an image; returns the paths.

    Panels: the input, the question as the fused decision reads it (the text [CLS]), every word, and the sound.
    """
    check_attention_maps(predictor)
    out = Path(out)
    model, device, prep = predictor.backend.model, predictor.backend.device, predictor.preprocessing
    examples = prepare(data, prep, predictor.classes, on_error, base)
    examples.rows = examples.rows[:count]
    by_number = {row.row: row for row in examples.rows}
    tokenizer = prep.tokenizer() if "text" in prep.modalities else None
    mean, std = np.array(prep.image_mean)[:, None, None], np.array(prep.image_std)[:, None, None]
    paths = []
    for batch in batches(examples, prep, predictor.classes, batch_size):
        with torch.inference_mode():
            result = model.forward_with_details(move(batch, device))
        queries = [m for m in model.modalities if m != "image"]
        maps = {q: region_attention(result.attention, result.image_grids, q).cpu().numpy() for q in queries}
        predicted = result.logits.argmax(1).tolist()
        for i, number in enumerate(batch["row"].tolist()):
            if not bool(batch["mask"]["image"][i]):
                continue
            row, panels = by_number[number], []
            if "text" in maps and bool(batch["mask"]["text"][i]):
                panels.append(("question", maps["text"][i, 0]))
                for word, tokens in word_spans(row.media["text"], tokenizer, prep.max_text_length):
                    if tokens:
                        panels.append((word, maps["text"][i, [1 + t for t in tokens]].mean(axis=0)))
            for q in (q for q in queries if q != "text" and bool(batch["mask"][q][i])):
                panels.append((q, maps[q][i, 0]))
            image = np.clip(batch["image"][i].numpy() * std + mean, 0, 1).transpose(1, 2, 0)  # (H, W, C)
            label = int(batch["label"][i])
            title = f"row {number}: predicted {predictor.classes[predicted[i]]}" + (
                f", label {predictor.classes[label]}" if label != NO_LABEL else "")
            paths.append(draw_attention(image[..., 0] if image.shape[2] == 1 else image, panels, title,
                                        out / f"row{number:05d}.png"))
    return paths
