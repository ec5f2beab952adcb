"""Top-k gradient sparsification with error feedback (Deep Gradient Compression style).

Lin et al. 2018, "Deep Gradient Compression". Each rank adds its residual to the bucket, keeps
``k = ceil(ratio * N)`` entries (by default those of largest magnitude, see ``selection`` below), and sends
them as compact (value, int32 index) pairs packed into one byte buffer. Indices differ across ranks, so the
pairs are all-gathered (not all-reduced) and scattered into a dense average. Everything not sent stays in
the residual. The first ``warmup_steps`` steps are dense fp32 all-reduces. Then, with
``density_warmup_steps``, the sent fraction starts at 25 % and shrinks 4x per stage (25 %, 6.25 %, 1.56 %,
...) down to ``ratio``, the stages spread evenly over those steps (the paper's exponential sparsity
warm-up). Local gradient clipping from the paper is not applied. Momentum correction is optional (``momentum``,
below; off by default, so the optimizer keeps its own momentum).

Which entries are sent is set by ``selection``. "magnitude" (default, as in the paper): the k largest
``|gradient + residual|``. Under Adam(W) this can starve parameters whose gradients are small in absolute size
(later layers, LayerNorm, biases): Adam divides every coordinate's step by that coordinate's own gradient RMS,
so such a parameter would move as fast as any other, but its entries rarely win a ranking by raw size and
their updates wait in the residual. "normalized": the k largest ``|gradient + residual| / (sqrt(v) + eps)``,
v the bias-corrected moving average of the entry's squared local gradient (decay ``selection_beta``, like
Adam's beta2; :mod:`fusion.distributed.moments`), i.e. the withheld update measured in steps of the entry's
typical gradient, the unit Adam moves it in. Only the ranking changes: the values sent are still the raw
``gradient + residual`` entries, exactly k per rank, and everything not sent stays in the residual. v is
updated every step, dense warm-up steps included (so the first sparse step already ranks with it), and is
stored per parameter like the residual, so it survives DDP's bucket rebuilds and checkpoint round trips.
It costs one more float per gradient entry and a few elementwise operations per bucket.

Momentum correction (``momentum`` m > 0, the paper's section 3.2). Error feedback alone makes the sparse
updates add up to the dense ones only for an optimizer that is linear in the gradient it is given. With the
optimizer's own momentum a value that waited t steps in the residual arrives without the t steps of momentum
it would have built up, and Adam(W) divides each entry by its own gradient RMS, so an accumulated value sent
once moves its weight only a few learning-rate steps. So the hook keeps the momentum itself, per entry and
locally: velocity ``u <- m * u + g`` (g: this rank's gradient), residual ``r <- r + u`` (the paper's v), send
the top-k of ``r`` (ranked as above: ``|r|``, or ``|r| / (sqrt(v) + eps)`` with v still from g), then *momentum
factor masking*: the velocity of the sent entries is set to 0 and so is their residual (up to the value
type's rounding error, which stays in the residual: sent + new residual = old residual + u, exactly; 0 for
fp32 values of fp32 gradients). Unsent entries keep their ``r`` and ``u``. So what a rank sends adds up to
its momentum-SGD updates ``u`` (error feedback in terms of u), except that a sent entry's momentum restarts
(the masking keeps stale momentum from pushing it further). The averaged sparse update is thus already a
momentum-SGD step and the optimizer must apply it as it is: **plain SGD without momentum**
(``model.optimizer=sgd model.momentum=0``). An optimizer with its own momentum would apply momentum twice,
Adam(W) would rescale the accumulated values again (the problem above). Weight decay of that SGD acts on the
weights directly, not through the hook's momentum (``1 - m`` times the decay that SGD with momentum m
applies). During the dense warm-up steps the hook all-reduces the velocity ``u`` (no masking, no residual), so
training is SGD with momentum from the first step on. The velocity is stored per parameter like the residual:
it survives DDP's bucket rebuilds and checkpoint round trips. It costs one more float per gradient entry.
The masking also means that an entry sent at every step (dense, or a high density early in the density
warm-up) moves by ``lr * g`` per step, not the ``lr * g / (1 - m)`` of SGD with momentum: its momentum restarts
each time. ``momentum_masking=False`` keeps the velocity of sent entries (only their residual is cleared), so
the sent values add up exactly to the momentum-SGD updates ``u`` of every entry (not in the paper).

Local Adam (``local_adam=True``, not in the paper; in the spirit of 1-bit Adam, Tang et al. 2021, which also
compresses an Adam-preconditioned quantity with error feedback). Momentum correction fixes SGD with momentum,
but under Adam(W) a rarely sent entry still moves its weight by only a few learning-rate steps, however long it
waited. So each rank runs Adam's moment estimates itself, per entry, on its local gradient g:
``m <- b1 * m + (1 - b1) * g``, ``v <- b2 * v + (1 - b2) * g ** 2``, and takes Adam's update direction
``d = m_hat / (sqrt(v_hat) + eps)`` (bias-corrected per parameter). Error feedback works on d (``r <- r + d``,
send the top-k of ``r``), so the sent values add up to every entry's Adam steps, only later, and the optimizer
must apply them as they are: **plain SGD without momentum** (``model.optimizer=sgd model.momentum=0``); its
weight decay ``lr * wd * w`` is then AdamW's decoupled weight decay. During the dense warm-up the hook
all-reduces d, so training starts as AdamW does with moments from each rank's local gradient (Adam's
normalisation happens before the average, not after). Costs two more floats per gradient entry. Verified on
the CPU (gloo) only: on CUDA it reached NaN before ``used_by_callback`` existed, and train.py refuses it on a
GPU until ``benchmarks/hooks_cuda_check.py`` passes there.

Learning-rate-aware error feedback (``scale_by_lr=True``, for an optimizer that applies what it gets as it is:
SGD without momentum, so with ``momentum`` > 0 or ``local_adam``). Plain error feedback keeps what was not sent
in gradient units, and the value is applied whenever it is finally sent, at that step's learning rate: under a
decaying schedule an entry that waited moves less than the steps it stands for. With ``scale_by_lr`` each
step's contribution is multiplied by that step's learning rate before it enters the residual, so the residual
holds parameter changes; the entries sent are divided by the current learning rate after the exchange, and the
optimizer's ``lr *`` turns them back into exactly the parameter changes they stand for. The learning rate of
each step is set by the training strategy (``learning_rate``; the same on every rank). Dense warm-up steps are
not affected.

If any rank's gradient holds inf/NaN, that rank sends NaN values, so every rank's bucket carries NaN to the
optimizer step (an AMP grad scaler then skips it), and every rank keeps its residual (and v, and the velocity)
as it was.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from fusion.distributed.base import HookState, completed_future, used_by_callback
from fusion.distributed.moments import GradientMoment, MomentUpdate
from fusion.distributed.residuals import ResidualStore

log = logging.getLogger(__name__)

_VALUE_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class AdamDirection:
    """One bucket's local Adam step: both moments with this step's gradient folded in (not stored yet)."""

    first: MomentUpdate  # m
    second: MomentUpdate  # v
    value: torch.Tensor  # (N,) m_hat / (sqrt(v_hat) + eps)


class TopKState(HookState):
    """State of :func:`topk_hook`.

    Args:
        module: the module wrapped by DDP.
        process_group: group to reduce over (None: world).
        ratio: fraction of each bucket's entries sent per step, in (0, 1].
        warmup_steps: dense all-reduce steps before sparsification starts.
        density_warmup_steps: steps after ``warmup_steps`` over which the sent fraction falls exponentially
            from 25 % to ``ratio`` (0: ``ratio`` from the start).
        value_dtype: wire type of the values: "fp16", "bf16", "fp32" or "fp64" (rounding error goes to the residual).
        granularity: "bucket" (the k largest of the whole bucket) or "tensor" (``ceil(ratio * n)`` largest of
            every gradient tensor; independent of DDP's bucket layout, so a resumed multi-bucket run
            reproduces an uninterrupted one exactly, at the cost of one top-k kernel per tensor).
        selection: rank entries by "magnitude" ``|corrected|`` or "normalized" ``|corrected| / (sqrt(v) + eps)``
            (see the module docstring).
        selection_beta: decay of the moving average v of squared gradients for "normalized", in [0, 1).
        selection_eps: eps of "normalized", > 0 (keeps entries whose gradient was always zero at score 0).
        momentum: momentum correction factor m in [0, 1) (0: off; > 0 needs plain SGD without momentum as the
            optimizer, see the module docstring).
        momentum_masking: with ``momentum`` > 0, set the velocity of sent entries to 0 (the paper's momentum
            factor masking; False keeps it).
        local_adam: exchange each rank's Adam direction instead of its gradient (needs plain SGD without
            momentum as the optimizer; not with ``momentum`` > 0; see the module docstring).
        adam_beta1, adam_beta2, adam_eps: Adam's betas and eps for ``local_adam``.
        scale_by_lr: keep the residual in parameter units (see the module docstring); needs ``learning_rate``
            set before every step.
    """

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None, ratio: float = 0.001,
                 warmup_steps: int = 0, value_dtype: str = "fp16",
                 granularity: Literal["bucket", "tensor"] = "bucket", density_warmup_steps: int = 0,
                 selection: Literal["magnitude", "normalized"] = "magnitude", selection_beta: float = 0.99,
                 selection_eps: float = 1e-8, momentum: float = 0.0, momentum_masking: bool = True,
                 local_adam: bool = False, adam_beta1: float = 0.9, adam_beta2: float = 0.999,
                 adam_eps: float = 1e-8, scale_by_lr: bool = False) -> None:
        super().__init__(module, process_group)
        self.scale_by_lr = bool(scale_by_lr)
        self.learning_rate: float | None = None  # this step's learning rate, set by the strategy (scale_by_lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"topk momentum must be in [0, 1), got {momentum}")
        if local_adam and momentum > 0:
            raise ValueError("topk local_adam and momentum > 0 exclude each other (Adam keeps its own momentum)")
        if not adam_eps > 0.0:
            raise ValueError(f"topk adam_eps must be > 0, got {adam_eps}")
        self.adam_eps = adam_eps
        self.adam_moments = ((GradientMoment(self.residuals.param_index, adam_beta1, power=1),
                              GradientMoment(self.residuals.param_index, adam_beta2, power=2))
                             if local_adam else None)
        self.momentum = momentum
        self.momentum_masking = bool(momentum_masking)
        self.velocities = ResidualStore(self.residuals.param_index) if momentum > 0 else None  # (N,) per bucket
        if granularity not in ("bucket", "tensor"):
            raise ValueError(f"topk granularity must be 'bucket' or 'tensor', got {granularity!r}")
        if selection not in ("magnitude", "normalized"):
            raise ValueError(f"topk selection must be 'magnitude' or 'normalized', got {selection!r}")
        if not 0.0 <= selection_beta < 1.0:
            raise ValueError(f"topk selection_beta must be in [0, 1), got {selection_beta}")
        if not selection_eps > 0.0:
            raise ValueError(f"topk selection_eps must be > 0, got {selection_eps}")
        self.selection = selection
        self.selection_eps = selection_eps
        self.squared_means = (GradientMoment(self.residuals.param_index, selection_beta, power=2)
                              if selection == "normalized" else None)
        self.granularity = granularity
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"topk ratio must be in (0, 1], got {ratio}")
        if warmup_steps < 0:
            raise ValueError(f"topk warmup_steps must be >= 0, got {warmup_steps}")
        if value_dtype not in _VALUE_DTYPES:
            raise ValueError(f"topk value_dtype must be one of {sorted(_VALUE_DTYPES)}, got {value_dtype!r}")
        if density_warmup_steps < 0:
            raise ValueError(f"topk density_warmup_steps must be >= 0, got {density_warmup_steps}")
        self.ratio = ratio
        self.warmup_steps = warmup_steps
        self.density_warmup_steps = density_warmup_steps
        self.warmup_densities = []  # 0.25, 0.0625, ... while above ratio
        density = 0.25
        while density > ratio:
            self.warmup_densities.append(density)
            density /= 4
        self.value_dtype = _VALUE_DTYPES[value_dtype]

    def density(self) -> float:
        """Fraction sent at the current step (``ratio`` once the density warm-up is over)."""
        into = self.step - self.warmup_steps
        if into < 0 or into >= self.density_warmup_steps or not self.warmup_densities:
            return self.ratio
        return self.warmup_densities[into * len(self.warmup_densities) // self.density_warmup_steps]

    def k(self, numel: int) -> int:
        """Entries each rank sends for ``numel`` gradients at the current step."""
        return min(numel, max(1, math.ceil(self.density() * numel)))

    def select(self, bucket: dist.GradBucket, scores: torch.Tensor) -> torch.Tensor:
        """Indices of the entries to send: the k highest ``scores`` ((N,)) of the bucket, or of each tensor."""
        if self.granularity == "bucket":
            return torch.topk(scores, self.k(scores.numel()), sorted=False).indices  # (k,)
        picked, offset = [], 0
        for param in bucket.parameters():
            size = param.numel()
            top = torch.topk(scores[offset:offset + size], self.k(size), sorted=False).indices
            picked.append(top + offset)
            offset += size
        return torch.cat(picked)  # (k,)

    def accumulated_velocity(self, bucket: dist.GradBucket,
                             gradient: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Momentum correction: (stored velocity or None, ``momentum * velocity + gradient``), both (N,) >= fp32.

        ``gradient`` ((N,), this rank's) is not changed; the new velocity is a new tensor, not stored yet.
        """
        old = self.velocities.get(bucket)
        dtype = torch.float64 if gradient.dtype == torch.float64 else torch.float32
        fresh = gradient.to(dtype)
        return old, (old * self.momentum + fresh if old is not None else fresh.clone())

    def step_learning_rate(self) -> float | None:
        """This step's learning rate with ``scale_by_lr`` (checked: set and positive), else None."""
        if not self.scale_by_lr:
            return None
        if self.learning_rate is None:
            raise RuntimeError("topk scale_by_lr needs each step's learning rate in state.learning_rate (set by "
                               "CompressedDDPStrategy, or by hand before backward)")
        if not self.learning_rate > 0:
            raise ValueError(f"topk scale_by_lr needs a positive learning rate, got {self.learning_rate}")
        return float(self.learning_rate)

    def adam_direction(self, bucket: dist.GradBucket, gradient: torch.Tensor) -> AdamDirection:
        """``local_adam``: Adam's moments with ``gradient`` ((N,), this rank's; not changed) folded in, and d."""
        first, second = (moment.updated(bucket, gradient) for moment in self.adam_moments)
        return AdamDirection(first, second, first.corrected().div_(second.rms().add_(self.adam_eps)))

    def commit_adam(self, bucket: dist.GradBucket, adam: AdamDirection, nonfinite: torch.Tensor) -> None:
        """Stores both moments of ``adam``, or keeps the old ones where ``nonfinite`` (() bool) is true."""
        self.adam_moments[0].commit(bucket, adam.first, nonfinite)
        self.adam_moments[1].commit(bucket, adam.second, nonfinite)

    def state_dict(self) -> dict[str, Any]:
        """The base state, plus the squared-gradient means for ``selection="normalized"``, the velocities
        for ``momentum > 0`` and both Adam moments for ``local_adam``."""
        state = super().state_dict()
        if self.adam_moments is not None:
            state["adam_moments"] = [moment.state_dict() for moment in self.adam_moments]
        if self.squared_means is not None:
            state["squared_gradient_means"] = self.squared_means.state_dict()
        if self.velocities is not None:
            state["velocities"] = self.velocities.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        if self.squared_means is not None:
            saved = state.get("squared_gradient_means")
            if saved is None:
                log.warning("topk: the hook state holds no squared-gradient means (saved with "
                            "selection=magnitude?); selection=normalized starts them from zero")
                saved = {"means": {}, "weights": {}}
            self.squared_means.load_state_dict(saved)
        if self.velocities is not None:
            saved = state.get("velocities")
            if saved is None:
                log.warning("topk: the hook state holds no velocities (saved with momentum=0?); momentum "
                            "correction starts them from zero")
            self.velocities.load_state_dict(saved or {})
        if self.adam_moments is not None:
            saved = state.get("adam_moments")
            if saved is None:
                log.warning("topk: the hook state holds no Adam moments (saved without local_adam?); local_adam "
                            "starts them from zero")
                saved = [{"means": {}, "weights": {}}] * 2
            for moment, moment_state in zip(self.adam_moments, saved, strict=True):
                moment.load_state_dict(moment_state)


def _dense_average(state: TopKState, buffer: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    state.counter.add_allreduce(buffer.numel() * buffer.element_size())
    future = dist.all_reduce(buffer.div_(state.world_size), group=state.group, async_op=True).get_future()
    return future.then(lambda fut: fut.value()[0])


def topk_hook(state: TopKState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-gather of the top-k (value, index) pairs, with error feedback."""
    buffer = bucket.buffer()  # (N,)
    numel, world_size = buffer.numel(), state.world_size
    # selection="normalized": this step's squared local gradient, taken before the dense path divides the buffer
    moments = state.squared_means.updated(bucket, buffer) if state.squared_means is not None else None
    # momentum correction: u = m * u + g, also taken before the buffer changes
    old_velocity, velocity = (state.accumulated_velocity(bucket, buffer) if state.velocities is not None
                              else (None, None))  # (N,) each
    # local_adam: this rank's Adam direction d, also taken before the buffer changes
    adam = state.adam_direction(bucket, buffer) if state.adam_moments is not None else None
    if state.step < state.warmup_steps:
        if velocity is not None:
            buffer.copy_(velocity)  # dense momentum: the optimizer (SGD without momentum) applies mean(u)
        if adam is not None:
            buffer.copy_(adam.value)  # dense Adam: the optimizer (SGD without momentum) applies mean(d)
        future = _dense_average(state, buffer) if world_size > 1 else completed_future(buffer)
        state.finish_bucket(bucket, compressed=False)
        if moments is None and velocity is None and adam is None:
            return future

        def keep_state(future: torch.futures.Future) -> torch.Tensor:
            used_by_callback(moments, old_velocity, velocity, adam)
            average = future.value()  # (N,) inf/NaN if any rank's gradient held them
            nonfinite = ~torch.isfinite(average).all()
            if moments is not None:
                state.squared_means.commit(bucket, moments, nonfinite=nonfinite)
            if velocity is not None:  # everything was sent, but the velocity is not masked while dense
                keep = old_velocity if old_velocity is not None else torch.zeros_like(velocity)
                state.velocities.set(bucket, torch.where(nonfinite, keep, velocity))
            if adam is not None:
                state.commit_adam(bucket, adam, nonfinite)
            return average

        return future.then(keep_state)

    work_dtype = torch.float64 if buffer.dtype == torch.float64 else torch.float32
    old_residual = state.residuals.get(bucket)
    # (N,) u with momentum correction, d with local_adam, else g
    fresh = velocity if velocity is not None else adam.value if adam is not None else buffer.to(work_dtype)
    learning_rate = state.step_learning_rate()  # None unless scale_by_lr
    if learning_rate is not None:
        fresh = fresh * learning_rate  # (N,) the parameter change this step stands for
    corrected = fresh + old_residual if old_residual is not None else fresh.clone()  # (N,)
    scores = corrected.abs()  # (N,)
    if moments is not None:
        scores = scores.div_(moments.rms().add_(state.selection_eps))  # (N,) in units of each entry's gradient RMS
    indices = state.select(bucket, scores)  # (k,)
    k = indices.numel()
    values = corrected[indices].to(state.value_dtype)  # (k,) as sent
    residual = corrected.index_put((indices,), corrected[indices] - values.to(work_dtype))  # (N,)
    keep = old_residual if old_residual is not None else torch.zeros_like(residual)
    if velocity is not None:  # momentum factor masking: sent entries start their velocity again from 0
        masked_velocity = velocity.index_fill(0, indices, 0.0) if state.momentum_masking else velocity  # (N,)
        keep_velocity = old_velocity if old_velocity is not None else torch.zeros_like(velocity)
    overflow = ~torch.isfinite(corrected).all()
    values = values + torch.where(overflow, float("nan"), 0.0).to(state.value_dtype)

    value_bytes = values.element_size()
    packed = torch.cat([values.view(torch.uint8), indices.to(torch.int32).view(torch.uint8)])  # (k * (v + 4),)
    gathered = packed.new_empty(world_size * packed.numel())  # (W * k * (v + 4),)
    state.counter.add_allgather(packed.numel())

    def scatter_average(future: torch.futures.Future) -> torch.Tensor:
        future.value()  # raises if the collective failed
        used_by_callback(gathered, keep, residual, moments, adam, *((keep_velocity, masked_velocity)
                                                                     if velocity is not None else ()))
        rows = gathered.view(world_size, -1)  # (W, k * (v + 4))
        all_values = rows[:, : k * value_bytes].contiguous().view(state.value_dtype)  # (W, k)
        all_indices = rows[:, k * value_bytes:].contiguous().view(torch.int32).long()  # (W, k)
        any_overflow = ~torch.isfinite(all_values).all()  # a skipped step consumes no residual anywhere
        state.residuals.set(bucket, torch.where(any_overflow, keep, residual))
        if velocity is not None:
            state.velocities.set(bucket, torch.where(any_overflow, keep_velocity, masked_velocity))
        if moments is not None:
            state.squared_means.commit(bucket, moments, nonfinite=any_overflow)
        if adam is not None:
            state.commit_adam(bucket, adam, any_overflow)
        dense = torch.zeros(numel, dtype=work_dtype, device=buffer.device)  # (N,)
        for rank in range(world_size):  # fixed order: identical float sums on every rank
            dense.index_add_(0, all_indices[rank], all_values[rank].to(work_dtype))
        dense.div_(world_size if learning_rate is None else world_size * learning_rate)
        return dense.to(buffer.dtype)

    work = dist.all_gather_into_tensor(gathered, packed, group=state.group, async_op=True)
    state.finish_bucket(bucket, compressed=True)
    return work.get_future().then(scatter_average)
