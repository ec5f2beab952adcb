"""ONNX export of a FusionModel: flat named inputs (one tensor per modality, text as input_ids and
attention_mask, a `mask/<modality>` bool per row), outputs `logits` and `gate/<stage>/<modality>`.

Exported with the torch.export based exporter (`dynamo=True`) with a dynamic batch dimension. The log-mel front
end's STFT is exported as a strided convolution with the windowed DFT basis (`LogMel.dft_power`): ONNX Runtime
runs it as a GEMM, where its STFT op is a plain DFT per frame. A missing modality is a row whose mask is False, as
in training: its input values are ignored (zero them, or leave anything finite).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion.fusions.model import FusionModel
from fusion.inference.preprocessing import Preprocessing

log = logging.getLogger(__name__)

OPSET = 18


def input_names(modalities: list[str]) -> list[str]:
    """ONNX input names in graph order: the modality tensors, then one presence mask per modality."""
    names = []
    for m in sorted(modalities):
        names += ["text/input_ids", "text/attention_mask"] if m == "text" else [m]
    return names + [f"mask/{m}" for m in sorted(modalities)]


def batch_of(modalities: list[str], inputs: dict[str, torch.Tensor]) -> dict:
    """The model's batch dict from tensors keyed by ONNX input name."""
    batch = {m: ({"input_ids": inputs["text/input_ids"], "attention_mask": inputs["text/attention_mask"]}
                 if m == "text" else inputs[m]) for m in modalities}
    batch["mask"] = {m: inputs[f"mask/{m}"].bool() for m in modalities}
    return batch


class ExportGraph(nn.Module):
    """FusionModel with positional tensor inputs in `input_names` order and outputs (logits, *gate weights)."""

    def __init__(self, model: FusionModel, gate_names: list[str]):
        super().__init__()
        self.model = model
        self.gate_names = gate_names
        self.names = input_names(model.modalities)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = batch_of(self.model.modalities, dict(zip(self.names, inputs, strict=True)))
        result = self.model.forward_with_details(batch)
        return (result.logits, *[result.gate_weights[name] for name in self.gate_names])  # (B, K), (B,) ...


def example_inputs(prep: Preprocessing, batch_size: int, present: dict[str, bool] | None = None,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the model's shapes and dtypes by ONNX input name (every modality present by default)."""
    generator = torch.Generator().manual_seed(seed)
    b = batch_size
    feeds = {}
    for m in prep.modalities:
        if m == "image":
            feeds[m] = torch.randn(b, prep.image_channels, prep.image_size, prep.image_size, generator=generator)
        elif m == "audio":
            feeds[m] = 0.1 * torch.randn(b, prep.audio_samples, generator=generator)
        elif m == "text":
            ids = torch.randint(3, 259, (b, prep.max_text_length), generator=generator)
            lengths = torch.randint(2, prep.max_text_length + 1, (b, 1), generator=generator)
            attention = (torch.arange(prep.max_text_length)[None, :] < lengths).long()  # (B, T)
            feeds["text/input_ids"], feeds["text/attention_mask"] = ids * attention, attention
        else:
            raise ValueError(f"ONNX export supports image, audio and text inputs, not '{m}'")
        feeds[f"mask/{m}"] = torch.full((b,), True if present is None else bool(present[m]))
    return feeds


def export_onnx(model: FusionModel, path: Path, example: dict[str, torch.Tensor]) -> dict:
    """Writes `model` to `path` as ONNX, traced on `example` (tensors by input name, batch size > 1: a size
    of 1 would be specialised); returns {"inputs", "outputs", "opset"} for config.json."""
    model = model.cpu().eval()
    with torch.inference_mode():
        gates = sorted(model.forward_with_details(batch_of(model.modalities, example)).gate_weights)
    graph = ExportGraph(model, gates).eval()
    names = input_names(model.modalities)
    outputs = ["logits", *[f"gate/{g}" for g in gates]]
    args = tuple(example[name] for name in names)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, args, dynamo=True, input_names=names, output_names=outputs,
                                    dynamic_shapes=(tuple({0: batch} for _ in args),), opset_version=OPSET,
                                    verbose=False)
    program.save(str(path), external_data=False)
    return {"inputs": names, "outputs": outputs, "opset": OPSET}


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """The exporter's optimiser logs every rewrite at INFO; keep only its warnings while exporting."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def subsets(modalities: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of `modalities`, smallest first."""
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(sorted(modalities), r)]


def compare_with_torch(model: FusionModel, prep: Preprocessing, run_onnx, batch_size: int = 8) -> dict[str, dict]:
    """ONNX Runtime against PyTorch on random inputs, for every non-empty subset of present modalities.

    Args:
        run_onnx: {input name: numpy array} -> {output name: numpy array}.

    Returns:
        "+".join(subset) -> {"max_abs_logit_diff", "same_predictions", "max_abs_gate_diff"}.
    """
    model = model.cpu().eval()
    names = input_names(prep.modalities)
    report = {}
    for subset in subsets(prep.modalities):
        feeds = example_inputs(prep, batch_size, {m: m in subset for m in prep.modalities}, seed=len(report))
        with torch.inference_mode():
            reference = model.forward_with_details(batch_of(prep.modalities, feeds))
        outputs = run_onnx({n: feeds[n].numpy() for n in names})
        logits = reference.logits.numpy()
        gate_diff = max((float(np.abs(outputs[f"gate/{g}"] - w.numpy()).max()) for g, w in reference.gate_weights.items()),
                        default=0.0)
        report["+".join(subset)] = {"max_abs_logit_diff": float(np.abs(outputs["logits"] - logits).max()),
                                    "same_predictions": bool((outputs["logits"].argmax(1) == logits.argmax(1)).all()),
                                    "max_abs_gate_diff": gate_diff}
    return report
