"""One training step of a FusionModel (forward, loss, backward, AdamW) with no host synchronisation.

A default step of the small fusion models launches ~900 kernels for ~4 ms of GPU work, and every `.item()` or
`bool(tensor)` makes the host wait for the GPU to drain. `TrainStep` keeps everything on the device: the loss is
`classification_loss` (masked sums, no boolean indexing), accuracy and loss are summed into a device tensor
(`stats`), the optimizer is AdamW with one fused kernel per step (`fused=True`) and capturable state. Modes:

- ``eager``: the step as written (a reference for the other two);
- ``compile``: forward + loss through torch.compile (Inductor), backward and fused AdamW as usual;
- ``graph``: the whole step (forward, loss, backward, optimizer) captured once in a CUDA graph with static
  batch buffers and replayed, after ``warmup`` eager steps on a side stream (the PyTorch "whole network
  capture" recipe). Random draws (dropout, modality dropout, SpecAugment) advance per replay. A batch of
  another size (the last, partial one) runs eagerly;
- ``compile_graph``: ``graph`` around the torch.compile'd forward + loss (Inductor's fused kernels, on the GPU
  also combo kernels: fewer nodes in the graph); compiled during the warm-up steps.

The learning rate is a device tensor, so a scheduler stepping on the host changes it for the graph too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.fusions.base import FusionResult

MODES = ("eager", "compile", "graph", "compile_graph")
GRAPH_MODES = ("graph", "compile_graph")

# (model result, batch) -> (total loss to minimise, fused cross-entropy to report), both () tensors
LossFn = Callable[[FusionResult, dict], tuple[torch.Tensor, torch.Tensor]]


def make_adamw(params, lr: float, weight_decay: float, device: torch.device | str) -> torch.optim.AdamW:
    """AdamW with one fused kernel per step on CUDA (its state and a tensor learning rate kept on the device,
    capturable in a CUDA graph); the foreach implementation on the CPU."""
    if torch.device(device).type == "cuda":
        params = list(params)
        if params and isinstance(params[0], dict):  # groups with their own learning rate: a tensor each, too
            params = [g | ({"lr": torch.tensor(float(g["lr"]), device=device)} if "lr" in g else {}) for g in params]
        return torch.optim.AdamW(params, lr=torch.tensor(lr, device=device), weight_decay=weight_decay, fused=True,
                                 capturable=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def _copy_into(static: object, value: object) -> None:
    if isinstance(static, dict):
        for key, item in static.items():
            _copy_into(item, value[key])
    elif isinstance(static, torch.Tensor):
        static.copy_(value, non_blocking=True)


def _clone(value: object) -> object:
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    return value.clone() if isinstance(value, torch.Tensor) else value


class TrainStep:
    """`step(batch)`: one optimisation step; `stats` sums (loss x B, correct, samples) on the device.

    Args:
        model: the FusionModel (in train mode while stepping).
        optimizer: its optimizer (`make_adamw`; for ``graph`` on CUDA it must be capturable).
        loss_fn: (result, batch) -> (total, fused CE); e.g. a partial of `classification_loss`.
        mode: one of ``MODES``.
        warmup: eager steps before the capture (``graph``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, mode: str = "eager",
                 warmup: int = 3):
        if mode not in MODES:
            raise ConfigError(f"train_step mode must be one of {list(MODES)}, got {mode!r}")
        self.model, self.optimizer, self.loss_fn, self.mode = model, optimizer, loss_fn, mode
        self.device = next(model.parameters()).device
        if mode in GRAPH_MODES and self.device.type != "cuda":
            raise ConfigError(f"train_step mode '{mode}' needs a CUDA device, the model is on '{self.device}'")
        if mode in GRAPH_MODES and not all(group.get("capturable", False) for group in optimizer.param_groups):
            raise ConfigError(f"train_step mode '{mode}' needs a capturable optimizer (make_adamw on CUDA)")
        self.warmup = warmup
        self.stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss x B, correct, samples
        # on the GPU Inductor also launches independent small kernels together (combo kernels: 440 -> 392 per step
        # of the default progressive model, benchmarks/latency/README.md)
        options = {"combo_kernels": True} if self.device.type == "cuda" else None
        self.forward_loss = torch.compile(self._forward_loss, options=options) if "compile" in mode else self._forward_loss
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict | None = None
        self.steps = 0

    def _forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.model.forward_with_details(batch)
        total, loss = self.loss_fn(result, batch)
        labels = batch["label"]
        correct = (result.logits.detach().argmax(1) == labels).sum()
        update = torch.stack([loss.detach().double() * labels.shape[0], correct.double(),
                              torch.full((), labels.shape[0], dtype=torch.float64, device=labels.device)])
        return total, update

    def _eager(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        total, update = self.forward_loss(batch)
        total.backward()
        self.optimizer.step()
        self.stats += update

    def _size(self, batch: dict) -> int:
        return int(batch["label"].shape[0])

    def step(self, batch: dict) -> None:
        """One step on `batch` (tensors already on the model's device)."""
        self.model.train()
        self.steps += 1
        if self.mode not in GRAPH_MODES:
            self._eager(batch)
            return
        if self.graph is not None:
            if self._size(batch) != self._size(self.static):
                self._eager(batch)  # e.g. the last, smaller batch of an epoch
                return
            _copy_into(self.static, batch)
            self.graph.replay()
            return
        current = torch.cuda.current_stream(self.device)
        if self.steps <= self.warmup:  # eager steps on a side stream before capturing (PyTorch's recipe)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self._eager(batch)
            current.wait_stream(side)
            return
        self.static = _clone(batch)
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates (and then overwrites) grads
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a CUDA call of another thread during capture (the DataLoader's pin-memory thread
        # allocating pinned memory, a checkpoint written in the background) must not invalidate the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            total, update = self.forward_loss(self.static)
            total.backward()
            self.optimizer.step()
            self.stats += update
        self.graph.replay()  # capturing records the step without running it

    def take_stats(self) -> dict[str, float]:
        """Mean loss and accuracy since the last call (one host read), then starts over."""
        loss_sum, correct, samples = self.stats.tolist()
        self.stats.zero_()
        return {"loss": loss_sum / max(samples, 1.0), "acc": correct / max(samples, 1.0), "samples": samples}
