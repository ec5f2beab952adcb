"""Runs an exported model.onnx with ONNX Runtime (CPU) on the batch dicts of fusion.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusion.inference.onnx_export import input_names


class OnnxBackend:
    """`backend(batch) -> (logits (B, K), {"<stage>/<modality>": (B,)})` through an onnxruntime session.

    Args:
        path: the model.onnx file.
        modalities: the model's modalities (they fix the input names).
        threads: intra-op threads (None: onnxruntime's default, every core).
        spinning: whether idle intra-op threads spin-wait for work (onnxruntime's default; on a CPU shared with
            other processes, off can be faster: benchmarks/latency/cpu_suite.py measures both).
    """

    def __init__(self, path: str | Path, modalities: list[str], threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.modalities = sorted(modalities)
        self.inputs = input_names(self.modalities)
        self.outputs = [o.name for o in self.session.get_outputs()]
        declared = [i.name for i in self.session.get_inputs()]
        if declared != self.inputs:
            raise ValueError(f"'{path}' has inputs {declared}, expected {self.inputs}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{input name: array} -> {output name: array}."""
        values = self.session.run(None, {name: feeds[name] for name in self.inputs})
        return dict(zip(self.outputs, values, strict=True))

    @staticmethod
    def feeds_from(batch: dict, modalities: list[str]) -> dict[str, np.ndarray]:
        """ONNX inputs by name from a batch dict of fusion.data (CPU tensors)."""
        feeds = {}
        for m in sorted(modalities):
            if m == "text":
                feeds["text/input_ids"] = batch[m]["input_ids"].cpu().numpy().astype(np.int64)
                feeds["text/attention_mask"] = batch[m]["attention_mask"].cpu().numpy().astype(np.int64)
            else:
                feeds[m] = batch[m].cpu().numpy().astype(np.float32)
            feeds[f"mask/{m}"] = batch["mask"][m].cpu().numpy().astype(bool)
        return feeds

    def __call__(self, batch: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        outputs = self.run(self.feeds_from(batch, self.modalities))
        gates = {name[len("gate/"):]: value for name, value in outputs.items() if name.startswith("gate/")}
        return outputs["logits"], gates
