"""Inference variants of one trained model: fp32, bf16 autocast, torch.compile, and the ONNX export run by ONNX
Runtime on the CPU in fp32 (``onnx``) and with int8 weights (``int8``: ONNX Runtime quantization; the former
``torch.ao.quantization.quantize_dynamic`` path is deprecated upstream and gone), and on CUDA the forward pass
replayed as one CUDA graph in fp32 (``graph``) and with bf16 weights (``graph_bf16``).

Each variant is a callable ``variant(batch) -> logits`` plus the device it runs on; accuracy is measured for
every variant by the caller, never assumed equal to the fp32 one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from fusion.errors import ConfigError

VARIANT_NAMES = ("fp32", "bf16", "compile", "int8", "onnx", "graph", "graph_bf16")


@dataclass
class Variant:
    """A ready-to-run form of a model.

    Attributes:
        name: One of ``VARIANT_NAMES``.
        model: The module that is called (a quantized or compiled copy where applicable).
        device: Where its inputs must live.
        autocast_dtype: Dtype for ``torch.autocast`` around the call, or None.
        eager: Whether ``model`` runs eagerly (dispatch-mode memory tracking and FLOP counting apply).
    """

    name: str
    model: nn.Module
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    eager: bool = True
    notes: list[str] = field(default_factory=list)

    @torch.inference_mode()
    def __call__(self, batch: dict) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.model(batch)
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            return self.model(batch).float()


class OnnxRuntimeModel(nn.Module):
    """``batch -> logits`` through ONNX Runtime (CPU): the model is exported to ONNX on the first call, traced
    with that batch's shapes (fusion/inference/onnx_export.py; dynamic batch dimension), and with ``int8`` its
    weights quantized to int8 (fusion/inference/onnx_quantize.py).

    Args:
        model: a FusionModel (``modalities``, ``forward_with_details``).
        threads: ONNX Runtime intra-op threads (None: torch's current CPU thread count, like the other variants).
        int8: quantize the exported graph.
    """

    def __init__(self, model: nn.Module, threads: int | None = None, int8: bool = False):
        super().__init__()
        self.source = copy.deepcopy(model).cpu().eval()
        self.threads = threads
        self.int8 = int8
        self.backend = None

    @torch.inference_mode(False)
    def _export(self, batch: dict) -> None:
        import tempfile
        from pathlib import Path

        from fusion.inference.onnx_export import export_onnx
        from fusion.inference.onnx_quantize import quantize_int8
        from fusion.inference.onnx_runner import OnnxBackend

        example = {name: torch.from_numpy(value.copy())
                   for name, value in OnnxBackend.feeds_from(batch, self.source.modalities).items()}
        if next(iter(example.values())).shape[0] == 1:  # a batch of 1 would fix the batch dimension
            example = {name: value.repeat(2, *[1] * (value.dim() - 1)) for name, value in example.items()}
        with tempfile.TemporaryDirectory(prefix="fusion-onnx-") as folder:
            path = Path(folder) / "model.onnx"
            export_onnx(self.source, path, example)
            if self.int8:
                path = quantize_int8(path, Path(folder) / "model.int8.onnx")
            self.backend = OnnxBackend(path, self.source.modalities, self.threads or torch.get_num_threads())

    def forward(self, batch: dict) -> torch.Tensor:
        if self.backend is None:
            self._export(batch)
        logits, _ = self.backend(batch)
        return torch.from_numpy(logits)


class CudaGraphModel(nn.Module):
    """``batch -> logits`` by replaying the whole forward pass as a CUDA graph (fusion/inference/cuda_graph.py);
    with ``bf16`` the weights are cast to bf16 once (`bf16_copy`; the log-mel front end stays fp32)."""

    def __init__(self, model: nn.Module, bf16: bool = False):
        super().__init__()
        from fusion.inference.cuda_graph import GraphedModel, bf16_copy

        self.inner = bf16_copy(model) if bf16 else model
        self.graphed = GraphedModel(self.inner)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.graphed(batch)


def build_variants(
    model: nn.Module, device: torch.device | str, names: tuple[str, ...] | list[str] = VARIANT_NAMES
) -> tuple[list[Variant], dict[str, str]]:
    """Builds the requested variants that apply to ``device``.

    Args:
        model: Trained fp32 model, ``model(batch) -> (B, num_classes)`` logits.
        device: ``cpu`` or ``cuda[:i]``. bf16 autocast and the CUDA-graph variants are built on
            CUDA only, int8 and onnx (ONNX Runtime) on CPU only.
        names: Subset of ``VARIANT_NAMES``.

    Returns:
        The variants, and ``{name: reason}`` for requested ones that were skipped.
    """
    device = torch.device(device)
    unknown = sorted(set(names) - set(VARIANT_NAMES))
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(VARIANT_NAMES)}")
    model = model.to(device).eval()
    variants: list[Variant] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "fp32":
            variants.append(Variant("fp32", model, device))
        elif name == "bf16":
            if device.type != "cuda":
                skipped[name] = "bf16 autocast is evaluated on CUDA only (CPU bf16 is emulated on most CPUs)"
            else:
                variants.append(Variant("bf16", model, device, autocast_dtype=torch.bfloat16))
        elif name == "compile":
            variants.append(Variant("compile", torch.compile(model), device, eager=False))
        elif name in ("onnx", "int8"):
            if device.type != "cpu":
                skipped[name] = f"the {name} variant runs ONNX Runtime's CPU provider only"
            elif not hasattr(model, "forward_with_details"):
                skipped[name] = "ONNX export covers fusion classifiers only"
            else:
                variants.append(Variant(name, OnnxRuntimeModel(model, int8=name == "int8"), device, eager=False))
        elif name in ("graph", "graph_bf16"):
            if device.type != "cuda":
                skipped[name] = "CUDA graphs need a CUDA device"
            elif not hasattr(model, "forward_with_details"):
                skipped[name] = "CUDA-graph replay covers fusion classifiers only"
            else:
                variants.append(Variant(name, CudaGraphModel(model, bf16=name == "graph_bf16"), device, eager=False))
    return variants, skipped
