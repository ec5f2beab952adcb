"""Speed of fusion.temporal.crf.LinearChainCRF against pytorch-crf (torchcrf.CRF).

Both CRFs share the same parameters; the script first checks that log-likelihoods, gradients and Viterbi paths
agree, then times (a) negative log-likelihood + backward and (b) Viterbi decoding. In every round each timed
function runs once, in an order rotated from round to round, so both implementations see the same machine
load; medians over the rounds after warm-up and their ratios are reported. On CUDA every timing is bracketed
by device synchronisation. Besides the default dispatch ("auto"), the script times our alternative paths
(log Z by the sequential scaled recursion and by the tree reduction; decoding with stored backpointers or with
backpointers recomputed along the path) so the dispatch choice can be checked on each device.

    python benchmarks/sync/crf_benchmark.py --device cpu --threads 1 --out benchmarks/sync/results/crf_cpu_1thread.json
    python benchmarks/sync/crf_benchmark.py --device cuda --out results_crf_gpu.json
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from fusion.temporal.crf import LinearChainCRF


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU milliseconds of one call."""
    _sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000.0, (time.process_time() - start_cpu) * 1000.0


def _paired_ratio(ref: list[float], ours: list[float]) -> float:
    return round(statistics.median(r / o for r, o in zip(ref, ours, strict=True)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tags", type=int, default=31)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    parser.add_argument("--time-tree", action="store_true",
                        help="also time the tree log Z on the CPU (always timed on CUDA; slow on the CPU by design)")
    parser.add_argument("--out", "--json", dest="out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    import torchcrf  # test/benchmark-only dependency

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = LinearChainCRF(args.tags, init_std=0.5).to(device)
    ref = torchcrf.CRF(args.tags, batch_first=True).to(device)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "allowed_transitions"})

    emissions = torch.randn(args.batch, args.steps, args.tags, device=device)
    tags = torch.randint(0, args.tags, (args.batch, args.steps), device=device)
    lengths = torch.randint(args.steps // 2, args.steps + 1, (args.batch,), device=device)
    lengths[0] = args.steps
    mask = torch.arange(args.steps, device=device)[None] < lengths[:, None]  # (B, T)

    # Agreement before timing: log-likelihoods and emission gradients of every log Z path, Viterbi paths of both
    # backtracking variants.
    e_ref = emissions.clone().requires_grad_(True)
    ll_ref = ref(e_ref, tags, mask, reduction="none")
    ll_ref.sum().backward()
    agreement = {}
    for method in ("auto", "scaled", "tree"):
        e_ours = emissions.clone().requires_grad_(True)
        ll = ours.score(e_ours, tags, mask) - ours._log_partition(e_ours, mask, method)
        ll.sum().backward()
        agreement[f"max_loglik_diff_{method}"] = (ll - ll_ref).abs().max().item()
        agreement[f"max_grad_diff_{method}"] = (e_ours.grad - e_ref.grad).abs().max().item()
    ref_paths = ref.decode(emissions, mask)
    for stored in (None, True, False):
        paths, lens = ours.decode(emissions, mask, store_backpointers=stored)
        name = {None: "auto", True: "stored", False: "recomputed"}[stored]
        agreement[f"paths_equal_{name}"] = all(paths[i, : lens[i]].tolist() == ref_paths[i] for i in range(args.batch))

    def nll_backward(crf, method=None):
        em = emissions.detach().requires_grad_(True)
        crf.zero_grad(set_to_none=True)
        if method is None:  # the public call path of each implementation
            loss = -crf(em, tags, mask, reduction="mean") if crf is ref else crf(em, tags, mask, reduction="mean")
        else:
            loss = -(crf.score(em, tags, mask) - crf._log_partition(em, mask, method)).mean()
        loss.backward()

    def decode(crf, stored=None):
        with torch.no_grad():
            if crf is ref:
                crf.decode(emissions, mask)
            else:
                crf.decode(emissions, mask, store_backpointers=stored)

    functions = {
        "ours_nll_backward": lambda: nll_backward(ours),
        "ref_nll_backward": lambda: nll_backward(ref),
        "ours_decode": lambda: decode(ours),
        "ref_decode": lambda: decode(ref),
        "ours_nll_backward_scaled": lambda: nll_backward(ours, "scaled"),
        "ours_nll_backward_tree": lambda: nll_backward(ours, "tree"),
        "ours_decode_stored": lambda: decode(ours, True),
        "ours_decode_recomputed": lambda: decode(ours, False),
    }
    if device.type != "cuda" and not args.time_tree:
        del functions["ours_nll_backward_tree"]
    names = list(functions)
    timings = {k: [] for k in names}
    cpu_timings = {k: [] for k in names}
    load_before = os.getloadavg()[0]
    for i in range(args.warmup + args.repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, elapsed_cpu = _time(functions[name], device)
            if i >= args.warmup:
                timings[name].append(elapsed)
                cpu_timings[name].append(elapsed_cpu)

    med = {k: statistics.median(v) for k, v in timings.items()}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    result = {
        "device": str(device),
        "card": card,
        "threads": torch.get_num_threads(),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "shape": [args.batch, args.steps, args.tags],
        "repeats": args.repeats,
        "warmup": args.warmup,
        **agreement,
        **{f"{k}_ms": round(v, 3) for k, v in med.items()},
        "speedup_nll_backward": round(med["ref_nll_backward"] / med["ours_nll_backward"], 2),
        "speedup_decode": round(med["ref_decode"] / med["ours_decode"], 2),
        "speedup_nll_backward_scaled": round(med["ref_nll_backward"] / med["ours_nll_backward_scaled"], 2),
        "speedup_nll_backward_tree": (round(med["ref_nll_backward"] / med["ours_nll_backward_tree"], 2)
                                      if "ours_nll_backward_tree" in med else None),
        "speedup_decode_stored": round(med["ref_decode"] / med["ours_decode_stored"], 2),
        "speedup_decode_recomputed": round(med["ref_decode"] / med["ours_decode_recomputed"], 2),
        # Ratios within each round (same load), median over rounds: less sensitive to load drifting between rounds.
        "speedup_nll_backward_paired": _paired_ratio(timings["ref_nll_backward"], timings["ours_nll_backward"]),
        "speedup_decode_paired": _paired_ratio(timings["ref_decode"], timings["ours_decode"]),
    }
    if device.type == "cpu":
        # Process CPU time (all threads) of the same calls: on a shared machine it leaves out the time spent
        # waiting for a core, which wall-clock medians include.
        cpu_med = {k: statistics.median(v) for k, v in cpu_timings.items()}
        result.update({f"{k}_cpu_ms": round(v, 3) for k, v in cpu_med.items()})
        result["speedup_nll_backward_cputime"] = round(cpu_med["ref_nll_backward"] / cpu_med["ours_nll_backward"], 2)
        result["speedup_decode_cputime"] = round(cpu_med["ref_decode"] / cpu_med["ours_decode"], 2)
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
