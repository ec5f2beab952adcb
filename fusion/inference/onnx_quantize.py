"""int8 weights for an exported model.onnx through ONNX Runtime's quantization tool (maintained, unlike
`torch.ao.quantization.quantize_dynamic`).

Dynamic quantization: weights of the chosen operators stored as int8 (per output channel), activations
quantized per call from their observed range, so no calibration data is needed. By default only MatMul/Gemm with
a constant weight are quantized (the fusion MLPs, gates and projections); `ops=("MatMul", "Gemm", "Conv")` also
turns the convolutions into ConvInteger, which ONNX Runtime runs slower than its fp32 convolution on small
images (benchmarks/latency/cpu_suite.py measures both).
"""

from __future__ import annotations

import logging
from pathlib import Path

DEFAULT_OPS = ("MatMul", "Gemm")


def nodes_in_scopes(path: str | Path, scopes: tuple[str, ...]) -> list[str]:
    """Names of the nodes exported from a module whose name ends in one of `scopes` (the exporter's
    `pkg.torch.onnx.name_scopes` metadata, e.g. "model.encoders.audio.frontend")."""
    import onnx

    names = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        meta = {prop.key: prop.value for prop in node.metadata_props}
        modules = [m.strip(" '\"") for m in meta.get("pkg.torch.onnx.name_scopes", "").strip("[]").split(",")]
        if any(m.split(".")[-1] in scopes for m in modules if m):
            names.append(node.name)
    return names


def quantize_int8(source: str | Path, target: str | Path, ops: tuple[str, ...] = DEFAULT_OPS,
                  keep_fp32: tuple[str, ...] = ("frontend",)) -> Path:
    """Writes `target`: `source` with int8 weights for `ops` (ONNX Runtime dynamic quantization); returns it.

    Nodes of modules named in `keep_fp32` stay fp32: the log-mel front end's mel projection reads a power
    spectrum whose range (about 1e-10 to 1e3) one per-call activation scale cannot hold; quantized, it cost
    21 points of accuracy on the MNIST + FSDD early-fusion model.

    Raises:
        ValueError: an op type ONNX Runtime's dynamic quantizer does not handle.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    unknown = sorted(set(ops) - {"MatMul", "Gemm", "Conv"})
    if unknown:
        raise ValueError(f"ops: {unknown} cannot be quantized dynamically; choose from MatMul, Gemm, Conv")
    target = Path(target)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the tool warns on the root logger that shape pre-processing was not run
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(ops), nodes_to_exclude=nodes_in_scopes(source, keep_fp32),
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    return target
