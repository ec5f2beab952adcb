"""Batch-1 inference without the launcher: the whole forward pass of a FusionModel replayed as one CUDA graph.

A small fusion model does ~30 MFLOPs per sample; eagerly, the GPU waits on a few hundred kernel launches and on
Python. `GraphedModel` captures `forward_with_details` once per (batch size, modalities given) into a
`torch.cuda.CUDAGraph` with static input buffers, and a call is then: copy the inputs into the buffers, one
`graph.replay()`, read the outputs. The presence masks are inputs like the others, so one graph per batch size
serves every subset of present modalities (an absent modality's values are ignored, as in training). The
forward pass has no host reads of tensor values while a
graph is captured (fusion/fusions/gating.py: `host_checks_allowed`), so the mask check is done here, on the
host copy of the mask, before the replay.

``autocast_dtype=torch.bfloat16`` captures the pass under bf16 autocast, which casts every weight on every
call (more kernels: slower than fp32 at batch 1); `bf16_copy` casts the weights once instead (the log-mel front
end stays fp32; the image's static buffer is bf16, so the copy into it is the cast), so bf16 costs no extra
kernel. ``compile=True`` captures the torch.compile'd (Inductor) forward,
whose fused kernels are fewer than the eager ones; its linear layers at batch 1 are Triton reductions fused with
their neighbours (`RowReduceLinear`) instead of cuBLAS calls.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _cast_inputs_to_weight(module: nn.Module, inputs: tuple) -> tuple:
    dtype = module.weight.dtype
    return tuple(x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


SMALL_BATCH_ROWS = 8


class RowReduceLinear(nn.Linear):
    """`nn.Linear` whose compiled form, for at most `SMALL_BATCH_ROWS` rows, is a multiply-and-sum over the input
    features accumulated in fp32: one Triton reduction that Inductor fuses with the layers around it (a layer
    norm before, a bias and GELU after), where a cuBLAS GEMV is a launch of its own and a bf16 one runs as
    split-K (three kernels). Eager and for more rows: the plain linear layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if torch.compiler.is_compiling() and x.numel() <= SMALL_BATCH_ROWS * x.shape[-1]:
            out = (x.unsqueeze(-2).float() * self.weight.float()).sum(-1)  # (..., out)
            return (out if self.bias is None else out + self.bias.float()).to(x.dtype)
        return self.eager(x)

    def eager(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MatmulThenBias(RowReduceLinear):
    """`RowReduceLinear` that, eagerly, runs the matmul, then a separate bias add. At batch 1 in bf16, cuBLASLt
    runs a linear layer with a bias epilogue as split-K (three kernels) where the matmul alone is one gemv."""

    def eager(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        return out if self.bias is None else out + self.bias


def _replace_plain_linears(model: nn.Module, linear_class: type[nn.Linear]) -> nn.Module:
    """`model` (in place) with its plain `nn.Linear` layers turned into `linear_class` (same weights)."""
    for module in model.modules():
        if type(module) is nn.Linear:  # not subclasses, e.g. attention's output projection read by its owner
            module.__class__ = linear_class
    return model


def with_row_reduce_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` whose plain `nn.Linear` layers are `RowReduceLinear` (same weights, same eager values)."""
    return _replace_plain_linears(copy.deepcopy(model), RowReduceLinear)


def bf16_copy(model: nn.Module) -> nn.Module:
    """A copy of a FusionModel with bf16 weights. Encoders with a `frontend` (the log-mel audio tower) keep it in
    fp32 and cast its output; every other module with a floating `weight` casts floating inputs to that weight's
    dtype (an image reaching the first convolution through `forward` or `forward_tokens`; a no-op on bf16
    activations); plain linear layers become `MatmulThenBias`. Logits bf16."""
    copy_ = _replace_plain_linears(copy.deepcopy(model).to(torch.bfloat16), MatmulThenBias)
    frontends = set()
    for encoder in copy_.encoders.values():
        frontend = getattr(encoder, "frontend", None)
        if isinstance(frontend, nn.Module):
            frontend.float()  # STFT and log of power: fp32 range
            frontend.register_forward_hook(lambda _m, _inputs, out: out.to(torch.bfloat16))
            frontends.update(id(m) for m in frontend.modules())
    for module in copy_.modules():
        weight = getattr(module, "weight", None)
        if id(module) not in frontends and isinstance(weight, torch.Tensor) and weight.is_floating_point():
            module.register_forward_pre_hook(_cast_inputs_to_weight)
    return copy_


class Outputs(nn.Module):
    """`FusionModel` as `batch -> (logits (B, K) float32, {"<stage>/<modality>": gate weights (B,)})`: plain
    tensors, so torch.compile and CUDA graphs see no dataclass. The logits' cast fuses into their last kernel;
    the gate weights keep the model's dtype (a cast per weight would be a kernel each in bf16) and are cast
    when they are read (`GraphedModel.forward_with_details`), so a call that wants only logits pays nothing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        result = self.model.forward_with_details(batch)
        return result.logits.float(), dict(result.gate_weights)


def input_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """modality -> dtype its encoder computes in: its front end's (the log-mel tower keeps fp32 in a
    `bf16_copy`), else its first floating parameter's. A static input buffer of that dtype makes the copy that
    fills it also the cast (no cast kernel inside the graph)."""
    dtypes = {}
    for name, encoder in model.encoders.items():
        owner = getattr(encoder, "frontend", None)
        owner = owner if isinstance(owner, nn.Module) else encoder
        tensors = [t for t in (*owner.parameters(), *owner.buffers()) if t.is_floating_point()]
        dtypes[name] = tensors[0].dtype if tensors else torch.float32
    return dtypes


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict  # static batch dict (same nesting as a batch)
    logits: torch.Tensor  # (B, K) static output
    gates: dict[str, torch.Tensor]  # (B,) static outputs


def _copy_into(static: object, value: object) -> None:
    if isinstance(static, dict):
        for key, item in value.items():
            _copy_into(static[key], item)
    else:
        static.copy_(value, non_blocking=True)


def _check_masks(mask: dict[str, torch.Tensor], given: tuple[str, ...]) -> None:
    """The eager model's error for a row with no present modality, read from CPU masks only (a GPU mask would
    need a host synchronisation: such a caller checks its rows itself, as for the ONNX graph)."""
    cpu = [mask[m] for m in given if m in mask and mask[m].device.type == "cpu"]
    if len(cpu) == len(given) and cpu and not bool(torch.stack([m.bool() for m in cpu], 1).any(1).all()):
        raise ValueError("every sample needs at least one present modality; got a sample with none")


class GraphedModel:
    """`model(batch) -> logits (B, K)` by CUDA-graph replay; `forward_with_details` also gives the gate weights.

    Args:
        model: a FusionModel on a CUDA device (put in eval mode here), fp32 or a `bf16_copy`.
        autocast_dtype: None (fp32) or e.g. torch.bfloat16: the captured pass runs under autocast; logits are
            returned as float32.
        compile: capture the torch.compile'd forward of a copy of `model` (Inductor's fused kernels; one
            compilation per batch size) whose linear layers are `RowReduceLinear`: at up to 8 rows each is a
            reduction fused with its neighbours. Later changes to `model`'s weights are not seen. Every
            compiled model of a process counts towards Dynamo's recompile limit (8 per function); past it the
            forward runs uncompiled, so clear the cache (`torch._dynamo.reset()`) between many models.
        warmup: eager calls on a side stream before each capture (cuDNN / cuBLAS set-up, compile).

    Returned tensors are copies, valid after the next call.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None, compile: bool = False,
                 warmup: int = 3):
        self.device = next(model.parameters()).device
        if self.device.type != "cuda":
            raise ValueError(f"GraphedModel needs a model on a CUDA device, got one on '{self.device}'")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (cuBLAS/cuDNN set-up must happen before capture), got {warmup}")
        self.model = (with_row_reduce_linears(model) if compile else model).eval()
        self.modalities = list(model.modalities)
        self.input_dtypes = input_dtypes(model)
        self.autocast_dtype = autocast_dtype
        self.warmup = warmup
        outputs = Outputs(self.model)
        self.forward_fn = torch.compile(outputs, dynamic=False) if compile else outputs
        self.graphs: dict[tuple, _Captured] = {}

    def _run(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.autocast_dtype is None:
            return self.forward_fn(batch)
        with torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False):  # no cache under capture
            return self.forward_fn(batch)

    def _static_batch(self, batch: dict, given: tuple[str, ...], size: int) -> dict:
        """Zeroed device buffers shaped like `batch` (every modality of the model, plus the masks)."""
        static = {}
        for m in given:
            value = batch[m]
            static[m] = ({k: torch.zeros_like(v, device=self.device) for k, v in value.items()}
                         if isinstance(value, dict) else self._zeros_for(m, value))
        missing = [m for m in self.modalities if m not in given]
        if missing:
            raise ValueError(f"GraphedModel: the batch has no input for {missing}; give a placeholder tensor with "
                             "mask False for a missing modality (its values are ignored)")
        static["mask"] = {m: torch.zeros(size, dtype=torch.bool, device=self.device) for m in self.modalities}
        return static

    def _zeros_for(self, modality: str, value: torch.Tensor) -> torch.Tensor:
        """A zeroed device buffer shaped like `value`; floating inputs take their encoder's dtype (`input_dtypes`),
        so a bf16 model's image is cast by the copy into the buffer. Under autocast the inputs stay as given."""
        dtype = value.dtype
        if value.is_floating_point() and self.autocast_dtype is None:
            dtype = self.input_dtypes.get(modality, dtype)
        return torch.zeros_like(value, dtype=dtype, device=self.device)

    def _capture(self, batch: dict, key: tuple) -> _Captured:
        given, size = key[1], key[0]
        static = self._static_batch(batch, given, size)
        _copy_into(static, {m: batch[m] for m in given} | {"mask": {m: batch["mask"][m] for m in given}})
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._run(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # a private pool per graph: replays in any order; thread_local: other threads' CUDA calls (a DataLoader's
        # pin-memory thread) cannot invalidate the capture
        with torch.no_grad(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            logits, gates = self._run(static)
        return _Captured(graph, static, logits, gates)

    def forward_with_details(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Batch dict (tensors on any device) -> (logits (B, K), gate weights (B,) by name), fresh float32 tensors."""
        captured = self._replay(batch)
        return captured.logits.clone(), {k: v.to(torch.float32, copy=True) for k, v in captured.gates.items()}

    def __call__(self, batch: dict) -> torch.Tensor:
        """Batch dict -> logits (B, K) (a fresh tensor)."""
        return self._replay(batch).logits.clone()

    def _replay(self, batch: dict) -> _Captured:
        given = tuple(m for m in self.modalities if m in batch)
        first = batch[given[0]]
        size = int((first["input_ids"] if isinstance(first, dict) else first).shape[0])
        _check_masks(batch["mask"], given)
        key = (size, given)
        captured = self.graphs.get(key)
        if captured is None:
            captured = self.graphs[key] = self._capture(batch, key)
        else:
            _copy_into(captured.inputs, {m: batch[m] for m in given} | {"mask": {m: batch["mask"][m] for m in given}})
        captured.graph.replay()
        return captured
