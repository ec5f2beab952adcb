"""LinearChainCRF against pytorch-crf and brute-force enumeration."""

import itertools
import shutil

import pytest
import torch

from fusion.temporal.crf import LinearChainCRF, band_transitions
from fusion.temporal.viterbi_native import load_kernel, viterbi_decode

torchcrf = pytest.importorskip("torchcrf")


def random_case(seed: int, batch: int, steps: int, tags: int, scale: float = 2.0):
    generator = torch.Generator().manual_seed(seed)
    emissions = torch.randn(batch, steps, tags, generator=generator) * scale
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    mask = torch.arange(steps)[None] < lengths[:, None]
    labels = torch.randint(0, tags, (batch, steps), generator=generator)
    return emissions, labels, mask


def paired(tags: int, seed: int):
    torch.manual_seed(seed)
    ours = LinearChainCRF(tags, init_std=1.0)
    ref = torchcrf.CRF(tags, batch_first=True)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "allowed_transitions"})
    return ours, ref


def assert_log_likelihood_and_gradients_match(ours, ref, log_likelihood, emissions, labels, mask):
    """`log_likelihood(emissions, labels, mask)` of `ours` equals pytorch-crf's, and so do all gradients."""
    e1, e2 = emissions.clone().requires_grad_(), emissions.clone().requires_grad_()
    ll_ours = log_likelihood(e1, labels, mask)
    ll_ref = ref(e2, labels, mask, reduction="none")
    torch.testing.assert_close(ll_ours, ll_ref, atol=1e-4, rtol=1e-5)
    weights = torch.randn(emissions.shape[0])
    (ll_ours * weights).sum().backward()
    (ll_ref * weights).sum().backward()
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-4, rtol=1e-4)
    for name in ("start_transitions", "end_transitions", "transitions"):
        expected = getattr(ref, name).grad
        expected = torch.zeros_like(getattr(ref, name)) if expected is None else expected  # unused when T = 1
        torch.testing.assert_close(getattr(ours, name).grad, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed,batch,steps,tags", [(0, 7, 13, 5), (1, 3, 1, 4), (2, 16, 40, 31), (3, 5, 9, 1)])
def test_log_likelihood_and_gradients_match_pytorch_crf(seed, batch, steps, tags):
    ours, ref = paired(tags, seed)
    emissions, labels, mask = random_case(seed, batch, steps, tags)
    assert_log_likelihood_and_gradients_match(ours, ref, ours.log_likelihood, emissions, labels, mask)


@pytest.mark.parametrize("store_backpointers", [None, False, True])  # None on the CPU: the compiled kernel
@pytest.mark.parametrize("seed,batch,steps,tags", [(0, 9, 17, 6), (4, 4, 1, 3), (5, 32, 60, 31)])
def test_viterbi_matches_pytorch_crf(seed, batch, steps, tags, store_backpointers):
    ours, ref = paired(tags, seed)
    emissions, _, mask = random_case(seed, batch, steps, tags)
    paths, lengths = ours.decode(emissions, mask, store_backpointers=store_backpointers)
    assert paths.dtype == torch.long and paths.shape == (batch, steps)
    assert lengths.tolist() == mask.sum(1).tolist()
    expected = ref.decode(emissions, mask)
    for i in range(batch):
        assert paths[i, : lengths[i]].tolist() == expected[i]
        assert (paths[i, lengths[i]:] == -1).all()


def brute_force(crf: LinearChainCRF, emissions: torch.Tensor, length: int):
    """log Z and the best path of one sequence by enumerating every tag path."""
    trans = crf.effective_transitions()
    scores = {}
    for path in itertools.product(range(crf.num_tags), repeat=length):
        s = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
        s = s + sum(emissions[t, path[t]] for t in range(length))
        s = s + sum(trans[path[t - 1], path[t]] for t in range(1, length))
        scores[path] = s.item()
    values = torch.tensor(list(scores.values()), dtype=torch.float64)
    return torch.logsumexp(values, 0).item(), max(scores, key=scores.get)


def test_constrained_transitions_against_enumeration():
    torch.manual_seed(0)
    crf = LinearChainCRF(4, allowed_transitions=band_transitions(4, 1), init_std=1.0)
    emissions, _, mask = random_case(7, 3, 5, 4, scale=3.0)
    log_z = crf.log_partition(emissions, mask)
    paths, lengths = crf.decode(emissions, mask)
    assert torch.equal(crf.decode(emissions, mask, store_backpointers=True)[0], paths)
    for i in range(3):
        expected_z, expected_path = brute_force(crf, emissions[i], int(lengths[i]))
        assert log_z[i].item() == pytest.approx(expected_z, abs=1e-4)
        assert tuple(paths[i, : lengths[i]].tolist()) == expected_path
        jumps = paths[i, 1 : lengths[i]] - paths[i, : lengths[i] - 1]
        assert jumps.abs().max().item() <= 1 if lengths[i] > 1 else True


def test_constrained_gradient_matches_logspace_reference():
    torch.manual_seed(1)
    crf = LinearChainCRF(7, allowed_transitions=band_transitions(7, 2), init_std=1.0)
    emissions, labels, mask = random_case(3, 6, 20, 7)
    labels = torch.arange(20).repeat(6, 1) % 2 + 3  # allowed path 3,4,3,4,...
    e1, e2 = emissions.clone().requires_grad_(), emissions.clone().requires_grad_()
    fast = crf.log_partition(e1, mask)
    slow = crf._log_partition_logspace(e2.masked_fill(~mask[:, :, None], 0.0), mask)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-5)
    fast.sum().backward()
    grad_fast = crf.transitions.grad.clone()
    crf.transitions.grad = None
    slow.sum().backward()
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_fast, crf.transitions.grad, atol=1e-4, rtol=1e-4)
    assert grad_fast[~crf.allowed_transitions].abs().max() == 0
    assert torch.isfinite(crf(emissions, labels, mask))


def test_extreme_scores_fall_back_to_log_space():
    ours, ref = paired(5, 2)
    emissions, labels, mask = random_case(2, 4, 30, 5, scale=400.0)
    ll_ours = ours.log_likelihood(emissions, labels, mask)
    ll_ref = ref(emissions.double(), labels, mask, reduction="none").float()
    assert torch.isfinite(ll_ours).all()
    torch.testing.assert_close(ll_ours, ll_ref, rtol=1e-4, atol=1e-2)


def test_padding_values_are_ignored():
    crf, _ = paired(4, 3)
    emissions, labels, mask = random_case(5, 5, 11, 4)
    poisoned = emissions.masked_fill(~mask[:, :, None], float("nan"))
    torch.testing.assert_close(crf.log_likelihood(poisoned, labels, mask), crf.log_likelihood(emissions, labels, mask))
    assert torch.equal(crf.decode(poisoned, mask)[0], crf.decode(emissions, mask)[0])


def test_bad_inputs_raise_clear_errors():
    crf = LinearChainCRF(3)
    emissions = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="first time step"):
        crf.decode(emissions, torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="right-padded"):
        crf.decode(emissions, torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(B, T, 3\)"):
        crf.decode(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="tags must lie"):
        crf(emissions, torch.full((2, 4), 3))
    with pytest.raises(ValueError, match="predecessor"):
        LinearChainCRF(2, allowed_transitions=torch.tensor([[True, False], [True, False]]))


LOG_Z_METHODS = ["scaled", "tree"]


@pytest.mark.parametrize("method", LOG_Z_METHODS)
@pytest.mark.parametrize(
    "seed,batch,steps,tags", [(0, 7, 13, 5), (1, 3, 1, 4), (2, 16, 40, 31), (3, 5, 9, 1), (6, 8, 2, 3), (8, 6, 33, 6)]
)
def test_each_log_partition_path_matches_pytorch_crf(method, seed, batch, steps, tags):
    """Both log Z paths (the GPU's tree and the CPU's scaled recursion) run on the CPU against the oracle, with
    lengths from 1 to T (T = 2 and T = 33 exercise the tree's padding to a power of two)."""
    ours, ref = paired(tags, seed)
    emissions, labels, mask = random_case(seed, batch, steps, tags)
    assert_log_likelihood_and_gradients_match(
        ours, ref, lambda e, y, m: ours.score(e, y, m) - ours._log_partition(e, m, method), emissions, labels, mask)


@pytest.mark.parametrize("method", LOG_Z_METHODS)
def test_each_log_partition_path_with_forbidden_transitions(method):
    """-inf transitions: value against enumeration, gradients against the log-space reference, zero gradient on
    forbidden entries."""
    torch.manual_seed(4)
    crf = LinearChainCRF(5, allowed_transitions=band_transitions(5, 1), init_std=1.0)
    emissions, _, mask = random_case(9, 4, 6, 5, scale=2.0)
    e1, e2 = emissions.clone().requires_grad_(), emissions.clone().requires_grad_()
    log_z = crf._log_partition(e1, mask, method)
    for i in range(4):
        expected_z, _ = brute_force(crf, emissions[i], int(mask[i].sum()))
        assert log_z[i].item() == pytest.approx(expected_z, abs=1e-4)
    log_z.sum().backward()
    grad_trans = crf.transitions.grad.clone()
    crf.transitions.grad = None
    crf._log_partition_logspace(e2.masked_fill(~mask[:, :, None], 0.0), mask).sum().backward()
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_trans, crf.transitions.grad, atol=1e-4, rtol=1e-4)
    assert grad_trans[~crf.allowed_transitions].abs().max() == 0


def test_tree_and_scaled_paths_agree_on_long_sequences():
    torch.manual_seed(5)
    crf = LinearChainCRF(12, init_std=1.0)
    emissions, _, mask = random_case(11, 9, 150, 12, scale=3.0)
    torch.testing.assert_close(
        crf._log_partition(emissions, mask, "tree"), crf._log_partition(emissions, mask, "scaled"), atol=2e-4, rtol=1e-5
    )


def test_tree_guard_rejects_ranges_that_could_underflow():
    from fusion.temporal.crf import _tree_is_safe

    trans = torch.zeros(4, 4)
    assert _tree_is_safe(torch.randn(2, 5, 4), trans)
    assert not _tree_is_safe(torch.tensor([[[0.0, 400.0, 0.0, 0.0]]]), trans)  # spread 400: 2 * 400 > 600
    banded = LinearChainCRF(4, allowed_transitions=band_transitions(4, 1)).effective_transitions().detach()
    assert _tree_is_safe(torch.zeros(1, 3, 4) + torch.tensor([0.0, 1.0, 2.0, 3.0]), banded)
    assert not _tree_is_safe(torch.tensor([[[0.0, 150.0, 0.0, 0.0]]]), banded)  # 2 * 3 detours * 150 > 600


def test_extreme_scores_through_tree_path_stay_finite():
    ours, ref = paired(5, 2)
    emissions, labels, mask = random_case(2, 4, 30, 5, scale=400.0)
    ll_ours = ours.score(emissions, labels, mask) - ours._log_partition(emissions, mask, "tree")
    ll_ref = ref(emissions.double(), labels, mask, reduction="none").float()
    torch.testing.assert_close(ll_ours, ll_ref, rtol=1e-4, atol=1e-2)


def test_unknown_log_partition_method_is_rejected():
    crf = LinearChainCRF(3)
    with pytest.raises(ValueError, match="method"):
        crf._log_partition(torch.randn(2, 4, 3), None, "sideways")


@pytest.mark.parametrize("store_backpointers", [None, False, True])
def test_viterbi_with_forbidden_transitions_and_mixed_lengths(store_backpointers):
    """The compiled kernel, backtracking by pointer doubling and by recomputation: lengths 1..T in one batch,
    banded transitions, against enumeration; paths never use a forbidden move."""
    torch.manual_seed(6)
    crf = LinearChainCRF(4, allowed_transitions=band_transitions(4, 1), init_std=1.0)
    emissions, _, _ = random_case(12, 6, 6, 4, scale=3.0)
    lengths = torch.tensor([6, 1, 2, 5, 3, 4])
    mask = torch.arange(6)[None] < lengths[:, None]
    paths, got_lengths = crf.decode(emissions, mask, pad_value=-7, store_backpointers=store_backpointers)
    assert got_lengths.tolist() == lengths.tolist()
    for i in range(6):
        _, expected = brute_force(crf, emissions[i], int(lengths[i]))
        assert tuple(paths[i, : lengths[i]].tolist()) == expected
        assert (paths[i, lengths[i]:] == -7).all()


@pytest.mark.parametrize("steps", [1, 2, 3, 17, 64, 65])
def test_pointer_doubling_equals_recomputed_backtrack(steps):
    ours, ref = paired(7, 13)
    emissions, _, mask = random_case(steps, 10, steps, 7)
    stored, _ = ours.decode(emissions, mask, store_backpointers=True)
    recomputed, lengths = ours.decode(emissions, mask, store_backpointers=False)
    assert torch.equal(stored, recomputed)
    expected = ref.decode(emissions, mask)
    assert all(stored[i, : lengths[i]].tolist() == expected[i] for i in range(10))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_compiled_kernel_is_built_and_decodes_like_the_torch_path(tmp_path, monkeypatch):
    """With a compiler the kernel builds into the cache folder and gives the torch decoder's paths; disabled by
    FUSION_NATIVE_CRF=0."""
    monkeypatch.setenv("FUSION_HOME", str(tmp_path))
    load_kernel.cache_clear()
    try:
        kernel = load_kernel()
        assert kernel is not None and list((tmp_path / "cache" / "kernels").glob("viterbi-*.so"))
        crf = LinearChainCRF(7, init_std=1.0)
        emissions, _, mask = random_case(21, 12, 40, 7)
        native = viterbi_decode(kernel, emissions, crf.start_transitions, crf.effective_transitions(),
                                crf.end_transitions, mask.sum(1), pad_value=-1)
        assert torch.equal(native, crf.decode(emissions, mask, store_backpointers=False)[0])
        monkeypatch.setenv("FUSION_NATIVE_CRF", "0")
        load_kernel.cache_clear()
        assert load_kernel() is None
    finally:
        load_kernel.cache_clear()
