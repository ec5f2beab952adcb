"""Linear-chain conditional random field, vectorised over the batch.

Lafferty et al., "Conditional Random Fields", ICML 2001. Sequences are batch-first, ``emissions`` has shape
(B, T, K) and ``mask`` (B, T) is right-padded with the first step always on.

The log-partition has two paths. On the CPU: a scaled forward algorithm in probability space (Rabiner 1989,
section V.A) with a hand-written backward pass (forward-backward marginals), alpha and beta advanced together by
one batched matmul per step, no autograd graph over time. On CUDA, where T small steps cost T rounds of kernel
launches: a balanced tree of batched matrix products over time in float64 (depth log2 T, autograd), used when
the score ranges rule out underflow. If the result is not finite, the plain log-space recursion is used.

Viterbi decoding on the CPU uses a small compiled C kernel (`viterbi_native`: one fused max-sum pass per step,
built on first use) when a C compiler is available. Otherwise, and on CUDA, the max-sum pass runs tag-major
(T, K, B) in torch: on CUDA the backpointers are stored and the paths follow from pointer doubling (log2 T
gathers); on the CPU the backpointers are recomputed along the chosen path only, in NumPy.
"""

import math

import numpy as np
import torch
from torch import Tensor, nn

from fusion.temporal.viterbi_native import load_kernel, viterbi_decode


def band_transitions(num_tags: int, max_jump: int) -> Tensor:
    """Allowed-transition matrix permitting moves of at most ``max_jump`` tags per step.

    Returns:
        BoolTensor (K, K), ``allowed[i, j]`` true when tag i may be followed by tag j.
    """
    idx = torch.arange(num_tags)
    return (idx[:, None] - idx[None, :]).abs() <= max_jump


def _check_inputs(emissions: Tensor, mask: Tensor | None, num_tags: int) -> Tensor:
    if emissions.dim() != 3 or emissions.shape[-1] != num_tags:
        raise ValueError(f"emissions must have shape (B, T, {num_tags}), got {tuple(emissions.shape)}")
    batch, steps, _ = emissions.shape
    if steps == 0:
        raise ValueError("emissions must have at least one time step")
    if mask is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=emissions.device)
    if mask.shape != (batch, steps):
        raise ValueError(f"mask must have shape {(batch, steps)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    if not bool(mask[:, 0].all()):
        raise ValueError("mask: the first time step of every sequence must be on")
    if steps > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must be right-padded (no on-step after an off-step)")
    return mask


class _ScaledLogPartition(torch.autograd.Function):
    """log Z via the scaled forward algorithm; gradients are the forward-backward marginals.

    Works time-major, (T, R, B, K), so every per-step tensor is contiguous and written in place (R = 2 when
    gradients are needed, else 1). The backward recursion runs in the same loop as the forward one: each
    sequence is reversed within its length, which turns beta_t = E (x_{t+1} * beta_{t+1}) into a forward-style
    recursion, and both are advanced by one batched (2, B, K) @ (2, K, K) product per step.
    """

    @staticmethod
    def forward(ctx, emissions: Tensor, start: Tensor, trans: Tensor, end: Tensor, mask: Tensor) -> Tensor:
        batch, steps, num_tags = emissions.shape
        lengths = mask.sum(1)  # (B,)
        need_grad = any(ctx.needs_input_grad[:4])
        rows = 2 if need_grad else 1
        emit_max = emissions.amax(-1, keepdim=True)  # (B, T, 1)
        inputs = emissions.new_empty(steps, rows, batch, num_tags)  # (T, R, B, K)
        emit_exp = inputs[:, 0]  # (T, B, K) view
        torch.sub(emissions.transpose(0, 1), emit_max.transpose(0, 1), out=emit_exp).exp_()
        trans_max = trans.max()
        trans_exp = torch.exp(trans - trans_max)  # (K, K)
        start_max, end_max = start.max(), end.max()
        end_exp = torch.exp(end - end_max)  # (K,)
        start_exp = torch.exp(start - start_max)

        if need_grad:
            time = torch.arange(steps, device=emissions.device)[:, None]  # (T, 1)
            reverse = torch.where(time < lengths[None, :], lengths[None, :] - 1 - time, time)  # (T, B), involution
            # Row of (step reverse[t, b], half 0, sequence b) in inputs viewed as (T * R * B, K): whole-row copies.
            source_rows = (reverse * (rows * batch) + torch.arange(batch, device=emissions.device)).flatten()
            inputs[:, 1].copy_(inputs.view(-1, num_tags).index_select(0, source_rows).view(steps, batch, num_tags))
            matrices = torch.stack([trans_exp, trans_exp.t()])  # (2, K, K)
            first = torch.stack([start_exp, end_exp])[:, None, :]  # (2, 1, K)
        else:
            matrices, first = trans_exp[None], start_exp[None, None]
        # Row 0: normalised alpha_t. Row 1 (sequence reversed): c_r = x'_r * beta'_r, beta'_r = E c_{r-1}.
        state = torch.empty_like(inputs)  # (T, R, B, K)
        before_emission = torch.empty_like(inputs)  # (T, R, B, K): row 1 holds beta'_r
        norms = emissions.new_empty(steps, rows, batch, 1)  # (T, R, B, 1)
        states, befores, xs, scales = state.unbind(0), before_emission.unbind(0), inputs.unbind(0), norms.unbind(0)
        torch.mul(xs[0], first, out=states[0])
        torch.sum(states[0], -1, keepdim=True, out=scales[0])
        states[0].div_(scales[0])
        for t in range(1, steps):
            torch.bmm(states[t - 1], matrices, out=befores[t])
            torch.mul(befores[t], xs[t], out=states[t])
            torch.sum(states[t], -1, keepdim=True, out=scales[t])
            states[t].div_(scales[t])

        probs = state[:, 0]  # (T, B, K)
        valid = mask.to(emissions.dtype)  # (B, T)
        last = (lengths - 1)[None, :, None].expand(1, batch, num_tags)  # (1, B, K)
        alpha_last = probs.gather(0, last).squeeze(0)  # (B, K)
        final = (alpha_last * end_exp).sum(-1)  # (B,)
        log_z = (
            ((norms[:, 0, :, 0].t().log() + emit_max.squeeze(-1)) * valid).sum(1)
            + final.log()
            + start_max
            + end_max
            + trans_max * (lengths - 1).to(emissions.dtype)
        )
        if need_grad:
            before_emission[0, 1] = end_exp  # beta'_0 = beta_{L-1} = end
            betas = before_emission.view(-1, num_tags).index_select(0, source_rows + batch)  # (T * B, K)
            betas = betas.view(steps, batch, num_tags)  # beta_t up to a factor per (t, b)
            ctx.save_for_backward(probs, betas, emit_exp, trans_exp, norms[:, 0, :, 0], mask, lengths)
        return log_z

    @staticmethod
    def backward(ctx, grad_log_z: Tensor):
        probs, betas, emit_exp, trans_exp, forward_norms, mask, lengths = ctx.saved_tensors
        steps, batch, num_tags = probs.shape
        valid = mask.t()[:, :, None]  # (T, B, 1)
        grad = grad_log_z[None, :, None]  # (1, B, 1)
        unary = probs * betas  # (T, B, K) marginals P(y_t = k) up to a factor per (t, b)
        unary_sum = unary.sum(-1, keepdim=True)  # (T, B, 1)
        unary.mul_(torch.where(valid, grad / unary_sum.clamp_min(1e-30), 0.0))  # = marginals * dlogZ
        grad_emissions = unary.transpose(0, 1)  # (B, T, K)
        grad_start = unary[0].sum(0)
        last = (lengths - 1)[None, :, None].expand(1, batch, num_tags)
        grad_end = unary.gather(0, last).squeeze(0).sum(0)

        if steps > 1:
            # Pair marginals P(y_{t-1} = i, y_t = j) ~ alpha_{t-1}(i) E_ij x_t(j) beta_t(j). Their normaliser is
            # sum_j (alpha_{t-1} E)_j x_t(j) beta_t(j) = forward_norms[t] * unary_sum[t], since the forward pass
            # divided alpha_{t-1} E * x_t by forward_norms[t].
            pair_norm = forward_norms[1:, :, None] * unary_sum[1:]  # (T-1, B, 1)
            weight = torch.where(valid[1:], grad / pair_norm.clamp_min(1e-30), 0.0)
            right = torch.mul(emit_exp[1:], betas[1:]).mul_(weight).reshape(-1, num_tags)  # ((T-1) B, K)
            left = probs[:-1].reshape(-1, num_tags)  # ((T-1) B, K)
            grad_trans = torch.mm(left.t(), right).mul_(trans_exp)
        else:
            grad_trans = torch.zeros_like(trans_exp)
        return grad_emissions, grad_start, grad_trans, grad_end, None


# Largest log-ratio between entries of one (rescaled) product in the tree reduction that float64 holds safely.
_TREE_LOG_RANGE = 600.0


def _tree_is_safe(emissions: Tensor, trans: Tensor) -> bool:
    """Whether the tree reduction cannot lose terms to float64 underflow.

    Every leaf matrix exp(trans + emission) spans at most ``spread`` in log space (range of the finite
    transitions plus the widest per-step emission range). A product of leaves spans at most ``2 * spread`` when
    every transition is allowed; with forbidden transitions a path may need up to K - 1 detour steps at either
    end, hence ``2 * (K - 1) * spread``.
    """
    finite = torch.isfinite(trans)
    allowed_max = trans.masked_fill(~finite, float("-inf")).max()
    allowed_min = trans.masked_fill(~finite, float("inf")).min()
    emission_range = (emissions.amax(-1) - emissions.amin(-1)).max()
    spread, all_allowed = torch.stack([allowed_max - allowed_min + emission_range, finite.all().to(trans.dtype)]).tolist()
    detour = 1 if all_allowed else max(trans.shape[0] - 1, 1)
    return math.isfinite(spread) and 2 * detour * spread <= _TREE_LOG_RANGE


def _log_partition_tree(emissions: Tensor, start: Tensor, trans: Tensor, end: Tensor, mask: Tensor) -> Tensor:
    """log Z by a balanced tree of batched matrix products over time (depth log2 T), float64, autograd.

    Step t >= 1 is the matrix M_t[i, j] = exp(trans[i, j] + emissions[t, j]) (identity at padded steps), so
    Z = (exp(start + emissions[0]))^T M_1 ... M_{T-1} exp(end). Each leaf and each product is divided by its
    largest entry (detached: log Z does not depend on these constants, so the gradient stays exact) and the
    logs of the divisors are added back. Few, large kernels instead of T small ones: meant for the GPU.

    Args:
        emissions: (B, T, K), padded steps already zero. start, end: (K,). trans: (K, K). mask: (B, T) bool.

    Returns:
        (B,) float32 log partition.
    """
    batch, steps, num_tags = emissions.shape
    emissions, start, trans, end = emissions.double(), start.double(), trans.double(), end.double()
    emit_max = emissions.detach().amax(-1, keepdim=True)  # (B, T, 1)
    emit_exp = torch.exp(emissions - emit_max)  # (B, T, K)
    trans_max = trans.detach().max()
    start_max, end_max = start.detach().max(), end.detach().max()
    first = torch.exp(start - start_max) * emit_exp[:, 0]  # (B, K)
    valid = mask[:, 1:]  # (B, T-1)
    log_scale = emit_max[:, 0, 0] + start_max + end_max + ((emit_max[:, 1:, 0] + trans_max) * valid).sum(1)  # (B,)
    if steps > 1:
        eye = torch.eye(num_tags, dtype=emit_exp.dtype, device=emit_exp.device)
        leaves = torch.exp(trans - trans_max)[None, None] * emit_exp[:, 1:, None, :]  # (B, T-1, K, K)
        product = torch.where(valid[:, :, None, None], leaves, eye)
        count = steps - 1
        width = 1 << (count - 1).bit_length()  # next power of two
        if width > count:
            product = torch.cat([product, eye.expand(batch, width - count, num_tags, num_tags)], 1)
        divisors = []
        while product.shape[1] > 1:
            product = torch.matmul(product[:, 0::2], product[:, 1::2])  # (B, n/2, K, K)
            divisor = product.detach().amax((-2, -1), keepdim=True)  # (B, n/2, 1, 1)
            product = product / divisor
            divisors.append(divisor.flatten(1))
        if divisors:
            log_scale = log_scale + torch.cat(divisors, 1).log().sum(1)
        first = torch.matmul(first[:, None, :], product[:, 0]).squeeze(1)  # (B, K)
    total = (first * torch.exp(end - end_max)).sum(-1)  # (B,)
    return (total.log() + log_scale).float()


def _backtrack_by_doubling(pointers: Tensor, final_tags: Tensor, mask: Tensor) -> Tensor:
    """Viterbi paths from stored backpointers in ceil(log2 T) gathers (pointer doubling), for the GPU.

    Args:
        pointers: (T-1, K, B) LongTensor, ``pointers[t, j, b]`` best tag at step t before tag j at step t+1.
        final_tags: (B,) best tag at each sequence's last step.
        mask: (B, T) bool, right-padded.

    Returns:
        (B, T) LongTensor; values at padded steps are arbitrary.
    """
    steps = mask.shape[1]
    num_tags = pointers.shape[1]
    # Padded steps point to themselves, so the chain from step T-1 passes through them unchanged.
    stay = torch.arange(num_tags, device=pointers.device)[None, None, :]  # (1, 1, K)
    chain = torch.where(mask.t()[1:, :, None], pointers.transpose(1, 2), stay)  # (T-1, B, K): tag(t+1) -> tag(t)
    # After the round with offset d, chain[t] maps the tag at step min(t + 2d, T - 1) to the tag at step t.
    offset = 1
    while offset < steps - 1:
        chain[:-offset] = chain[:-offset].gather(2, chain[offset:])
        offset *= 2
    before_last = chain.gather(2, final_tags[None, :, None].expand(steps - 1, -1, 1)).squeeze(2)  # (T-1, B)
    return torch.cat([before_last, final_tags[None]], 0).t()


def _backtrack_recomputing(scores: Tensor, trans: Tensor, final_tags: Tensor, lengths: Tensor) -> Tensor:
    """Viterbi paths by recomputing each backpointer along the chosen path only, in NumPy (for the CPU).

    Sequences are right-aligned first (step r of the loop is step L - 2 - r of a sequence of length L), so the
    loop needs no masking: three small NumPy calls per step. Rows are padded to a multiple of 8 tags (score 0,
    transition -inf), which makes NumPy's row-wise argmax markedly faster.

    Args:
        scores: (T, K, B) best score of a path ending in each tag. trans: (K, K). final_tags: (B,).
        lengths: (B,) sequence lengths.

    Returns:
        (B, T) LongTensor; values at padded steps are arbitrary.
    """
    steps, num_tags, batch = scores.shape
    width = -(-num_tags // 8) * 8
    device = scores.device
    back = torch.arange(steps - 1, device=device)[:, None]  # (T-1, 1)
    source = (lengths[None, :] - 2 - back).clamp_min(0)  # (T-1, B) step scored at loop iteration r
    rows = (source * batch + torch.arange(batch, device=device)).flatten()  # rows of (T * B, width)
    by_sequence = scores.new_zeros(steps, batch, width)
    by_sequence[:, :, :num_tags] = scores.transpose(1, 2)
    aligned = by_sequence.view(-1, width).index_select(0, rows).view(steps - 1, batch, width).cpu().numpy()
    trans_into = np.full((num_tags, width), -np.inf, dtype=aligned.dtype)  # (K_next, width) over K_prev
    trans_into[:, :num_tags] = trans.t().cpu().numpy()
    tags = final_tags.cpu().numpy()
    backtracked = np.empty((steps, batch), dtype=np.int64)  # row r: tag at step L - 1 - r
    backtracked[0] = tags
    candidates = np.empty((batch, width), dtype=aligned.dtype)
    for r in range(steps - 1):
        np.take(trans_into, tags, axis=0, out=candidates, mode="clip")
        candidates += aligned[r]
        tags = backtracked[r + 1]
        np.argmax(candidates, axis=1, out=tags)
    right_aligned = torch.from_numpy(backtracked).to(device)  # (T, B)
    time = torch.arange(steps, device=device)[None, :]  # (1, T)
    source = (lengths[:, None] - 1 - time).clamp_min(0)  # (B, T)
    return right_aligned.t().gather(1, source)


class LinearChainCRF(nn.Module):
    """Linear-chain CRF over K tags with learned start, end and transition scores.

    Args:
        num_tags: number of tags K.
        allowed_transitions: optional BoolTensor (K, K); ``False`` forbids tag i -> tag j.
        init_std: standard deviation of the initial (uniform-like) transition scores.
    """

    def __init__(self, num_tags: int, allowed_transitions: Tensor | None = None, init_std: float = 0.1) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-init_std, init_std))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-init_std, init_std))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-init_std, init_std))
        if allowed_transitions is None:
            allowed_transitions = torch.ones(num_tags, num_tags, dtype=torch.bool)
        allowed_transitions = torch.as_tensor(allowed_transitions, dtype=torch.bool)
        if allowed_transitions.shape != (num_tags, num_tags):
            raise ValueError(
                f"allowed_transitions must have shape {(num_tags, num_tags)}, got {tuple(allowed_transitions.shape)}"
            )
        if not bool(allowed_transitions.any(0).all()):
            raise ValueError("allowed_transitions: every tag needs at least one allowed predecessor")
        self.register_buffer("allowed_transitions", allowed_transitions)

    def effective_transitions(self) -> Tensor:
        """Transition scores (K, K) with forbidden moves set to -inf."""
        return self.transitions.masked_fill(~self.allowed_transitions, float("-inf"))

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """log Z for each sequence.

        Args:
            emissions: (B, T, K) unary scores.
            mask: (B, T) bool, right-padded; None means all steps on.

        Returns:
            (B,) log partition function.
        """
        return self._log_partition(emissions, mask, "auto")

    def _prepare(self, emissions: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Checked bool mask and float32 emissions with padded steps set to zero."""
        mask = _check_inputs(emissions, mask, self.num_tags)
        return torch.where(mask[:, :, None], emissions.float(), 0.0), mask

    def _log_partition(self, emissions: Tensor, mask: Tensor | None, method: str) -> Tensor:
        """log Z by ``method``: "tree" (log-depth matrix products), "scaled" (sequential forward-backward) or
        "auto" (tree on CUDA when it cannot underflow, else scaled)."""
        emissions, mask = self._prepare(emissions, mask)
        return self._log_partition_prepared(emissions, mask, method)

    def _log_partition_prepared(self, emissions: Tensor, mask: Tensor, method: str) -> Tensor:
        if method not in ("auto", "tree", "scaled"):
            raise ValueError(f"method must be auto|tree|scaled, got {method!r}")
        trans = self.effective_transitions().float()
        start, end = self.start_transitions.float(), self.end_transitions.float()
        if method == "auto":
            method = "tree" if emissions.is_cuda and _tree_is_safe(emissions, trans) else "scaled"
        if method == "tree":
            log_z = _log_partition_tree(emissions, start, trans, end, mask)
        else:
            log_z = _ScaledLogPartition.apply(emissions, start, trans, end, mask)
        if not bool(torch.isfinite(log_z).all()):
            log_z = self._log_partition_logspace(emissions, mask)
        return log_z

    def _log_partition_logspace(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Reference forward algorithm in log space (slow, numerically robust)."""
        trans = self.effective_transitions().float()
        alpha = self.start_transitions.float() + emissions[:, 0]  # (B, K)
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha[:, :, None] + trans[None], dim=1) + emissions[:, t]  # (B, K)
            alpha = torch.where(mask[:, t, None], step, alpha)
        return torch.logsumexp(alpha + self.end_transitions.float(), dim=-1)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unnormalised score of the given tag paths.

        Args:
            emissions: (B, T, K).
            tags: (B, T) LongTensor; values at padded steps are ignored.
            mask: (B, T) bool.

        Returns:
            (B,) path scores.
        """
        emissions, mask = self._prepare(emissions, mask)
        return self._score_prepared(emissions, tags, mask)

    def _score_prepared(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Path scores from prepared inputs (see ``_prepare``), all sequences at once with gathers."""
        if tags.shape != mask.shape:
            raise ValueError(f"tags must have shape {tuple(mask.shape)}, got {tuple(tags.shape)}")
        tags = tags.long().masked_fill(~mask, 0)
        if bool(((tags < 0) | (tags >= self.num_tags)).any()):
            raise ValueError(f"tags must lie in [0, {self.num_tags}) at unmasked steps")
        unary = emissions.gather(2, tags[:, :, None]).sum((1, 2))  # (B,), padded emissions are zero
        trans = self.effective_transitions().float()
        pair = trans.flatten()[tags[:, :-1] * self.num_tags + tags[:, 1:]]  # (B, T-1)
        pair = pair.masked_fill(~mask[:, 1:], 0.0).sum(1)
        last_tag = tags.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)  # (B,)
        return self.start_transitions[tags[:, 0]] + unary + pair + self.end_transitions[last_tag]

    def log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p(tags | emissions) for each sequence, shape (B,)."""
        emissions, mask = self._prepare(emissions, mask)
        return self._score_prepared(emissions, tags, mask) - self._log_partition_prepared(emissions, mask, "auto")

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """Negative log-likelihood of ``tags``.

        Args:
            emissions: (B, T, K).
            tags: (B, T).
            mask: (B, T) bool, right-padded.
            reduction: ``"none"`` (B,), ``"sum"``, ``"mean"`` (over sequences) or ``"token_mean"``.
        """
        nll = -self.log_likelihood(emissions, tags, mask)  # (B,)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.mean()
        if reduction == "token_mean":
            steps = mask.sum() if mask is not None else tags.numel()
            return nll.sum() / steps
        raise ValueError(f"reduction must be none|sum|mean|token_mean, got {reduction!r}")

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None, pad_value: int = -1,
               store_backpointers: bool | None = None) -> tuple[Tensor, Tensor]:
        """Viterbi decoding for the whole batch.

        Args:
            emissions: (B, T, K).
            mask: (B, T) bool, right-padded.
            pad_value: value written at padded steps of the returned paths.
            store_backpointers: keep the argmax of every step (one gather per step when backtracking) instead
                of recomputing it along the chosen path on the CPU. None: on CUDA, where an argmax costs no
                more than a max; on the CPU the compiled kernel of `viterbi_native` decodes when it can be
                built (same paths), else a max over the outer dimension without the argmax.

        Returns:
            paths: (B, T) LongTensor of best tags, ``pad_value`` after each sequence's end.
            lengths: (B,) LongTensor of sequence lengths.
        """
        mask = _check_inputs(emissions, mask, self.num_tags)
        batch, steps, num_tags = emissions.shape
        trans = self.effective_transitions().float()
        lengths = mask.sum(1)
        if store_backpointers is None and emissions.device.type == "cpu" and (kernel := load_kernel()) is not None:
            paths = viterbi_decode(kernel, emissions, self.start_transitions, trans, self.end_transitions, lengths,
                                   pad_value)
            return paths, lengths
        if store_backpointers is None:
            store_backpointers = emissions.is_cuda

        # Forward max-sum pass, tag-major (T, K, B): the max over the previous tag runs over the outermost
        # dimension, which is vectorised. Rounding matches (score + transition) + emission of the reference.
        # Padded steps are computed too but never read (the backtrack starts at each sequence's last step).
        emissions_tm = emissions.float().permute(1, 2, 0).contiguous()  # (T, K, B)
        trans_ij = trans[:, :, None].contiguous()  # (K_prev, K_next, 1)
        scores = torch.empty_like(emissions_tm)  # (T, K, B) best score of a path ending in each tag
        torch.add(emissions_tm[0], self.start_transitions.float()[:, None], out=scores[0])
        candidates = emissions_tm.new_empty(num_tags, num_tags, batch)  # (K_prev, K_next, B)
        stored_steps = steps - 1 if store_backpointers and steps > 1 else 0
        pointers = emissions_tm.new_empty(stored_steps, num_tags, batch, dtype=torch.long)  # (T-1, K, B) if stored
        score_steps, emission_steps, pointer_steps = scores.unbind(0), emissions_tm.unbind(0), pointers.unbind(0)
        score_rows = scores.unsqueeze(2).unbind(0)  # (K, 1, B) views, broadcast over the next tag
        for t in range(1, steps):
            torch.add(score_rows[t - 1], trans_ij, out=candidates)
            if store_backpointers:
                torch.max(candidates, 0, out=(score_steps[t], pointer_steps[t - 1]))
            else:
                torch.amax(candidates, 0, out=score_steps[t])
            score_steps[t].add_(emission_steps[t])
        last = (lengths - 1)[None, None, :].expand(1, num_tags, batch)  # (1, K, B)
        final = scores.gather(0, last).squeeze(0)  # (K, B)
        final_tags = (final + self.end_transitions.float()[:, None]).argmax(0)  # (B,)
        if steps == 1:
            paths = final_tags[:, None]
        elif store_backpointers:
            paths = _backtrack_by_doubling(pointers, final_tags, mask)
        else:
            paths = _backtrack_recomputing(scores, trans, final_tags, lengths)
        return paths.masked_fill(~mask, pad_value), lengths
