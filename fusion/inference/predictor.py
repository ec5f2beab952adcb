"""Predictor: a trained classifier (PyTorch or ONNX Runtime) behind `predict(manifest | DataFrame | dict)`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.fusions.model import FusionModel
from fusion.inference.examples import NO_LABEL, batches, prepare
from fusion.inference.preprocessing import Preprocessing

log = logging.getLogger(__name__)

# batch dict -> (logits (B, K), {"<stage>/<modality>": gate weights (B,)})
Backend = Callable[[dict], tuple[np.ndarray, dict[str, np.ndarray]]]


class TorchBackend:
    """Runs a FusionModel in eval mode under inference_mode on `device`."""

    def __init__(self, model: FusionModel, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def __call__(self, batch: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        batch = move(batch, self.device)
        with torch.inference_mode():
            result = self.model.forward_with_details(batch)
        gates = {name: w.float().cpu().numpy() for name, w in result.gate_weights.items()}
        return result.logits.float().cpu().numpy(), gates


def move(value: object, device: torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: move(v, device) for k, v in value.items()}
    return value


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # (B, K)
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass
class Predictor:
    """A trained classifier and the preprocessing it was trained with.

    Attributes:
        backend: batch -> (logits, gate weights); TorchBackend or fusion.inference.onnx_runner.OnnxBackend.
        classes: class names in logit order.
        preprocessing: input settings (image size, audio length, tokenizer ...).
        folder: the run or export folder it was loaded from (predict.py writes there by default).
        kind: fusion kind (early, late, progressive).
    """

    backend: Backend
    classes: list[str]
    preprocessing: Preprocessing
    folder: Path
    kind: str = "model"

    def predict(self, data: object, batch_size: int = 64, on_error: str = "raise", base: str | Path | None = None):
        """Predicts every row of `data`.

        Args:
            data: a manifest path (CSV/JSONL), a pandas DataFrame with the manifest's columns, or one example as
                a dict (e.g. {"image": "a.png", "text": "a seven"}); `label` is optional, missing modalities are
                masked as in training.
            batch_size: rows per forward pass.
            on_error: "raise" (one error listing every bad row) or "skip" (listed in `result.attrs["skipped"]`).
            base: folder that relative paths of a DataFrame or dict resolve against (default: working folder).

        Returns:
            A DataFrame with `row` (manifest row number, from 1), `label` (when the data has labels), `pred`,
            `prob/<class>` for every class and `gate/<stage>/<modality>` for every gate weight.
        """
        import pandas as pd

        examples = prepare(data, self.preprocessing, self.classes, on_error, Path(base) if base else None)
        parts = []
        for batch in batches(examples, self.preprocessing, self.classes, batch_size):
            logits, gates = self.backend(batch)
            probs = softmax(logits.astype(np.float64))
            part = {"row": batch["row"].numpy()}
            if examples.has_labels:
                part["label"] = [self.classes[i] if i != NO_LABEL else "" for i in batch["label"].tolist()]
            part["pred"] = [self.classes[i] for i in probs.argmax(axis=1)]
            part.update({f"prob/{c}": probs[:, i] for i, c in enumerate(self.classes)})
            part.update({f"gate/{name}": gates[name] for name in sorted(gates)})
            parts.append(pd.DataFrame(part))
        frame = pd.concat(parts, ignore_index=True)
        frame.attrs["skipped"] = [str(p) for p in examples.skipped]
        frame.attrs["skipped_problems"] = examples.skipped
        return frame

    def __call__(self, data: object, **kwargs):
        return self.predict(data, **kwargs)


def summary(frame) -> dict:
    """Rows, predicted class counts and, where labels are given, accuracy over the labelled rows."""
    counts = frame["pred"].value_counts()
    classes = [column[len("prob/"):] for column in frame.columns if column.startswith("prob/")]
    report = {"rows": int(len(frame)), "predicted": {c: int(counts[c]) for c in classes if c in counts}}
    if "label" in frame:
        labelled = frame[frame["label"] != ""]
        if len(labelled):
            report["labelled_rows"] = int(len(labelled))
            report["accuracy"] = float((labelled["pred"] == labelled["label"]).mean())
    if frame.attrs.get("skipped"):
        report["skipped_problems"] = len(frame.attrs["skipped"])
    return report
