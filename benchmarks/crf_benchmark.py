"""Speed of fusion.temporal.crf.LinearChainCRF against pytorch-crf (torchcrf.CRF).

Both CRFs share the same parameters; the script first checks that log-likelihoods and Viterbi paths agree,
then times (a) negative log-likelihood + backward and (b) Viterbi decoding, alternating the two
implementations inside one loop and reporting medians.

    python benchmarks/crf_benchmark.py --device cpu
    python benchmarks/crf_benchmark.py --device cuda --json results_crf_cuda.json
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


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tags", type=int, default=31)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
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

    # Agreement check before timing.
    ll_ours = ours.log_likelihood(emissions, tags, mask)
    ll_ref = ref(emissions, tags, mask, reduction="none")
    max_ll_diff = (ll_ours - ll_ref).abs().max().item()
    paths, lens = ours.decode(emissions, mask)
    ref_paths = ref.decode(emissions, mask)
    paths_equal = all(paths[i, : lens[i]].tolist() == ref_paths[i] for i in range(args.batch))

    def nll_backward(crf, is_ref):
        em = emissions.detach().requires_grad_(True)
        crf.zero_grad(set_to_none=True)
        loss = -crf(em, tags, mask, reduction="mean") if is_ref else crf(em, tags, mask, reduction="mean")
        loss.backward()

    def decode(crf, is_ref):
        with torch.no_grad():
            crf.decode(emissions, mask)

    timings = {k: [] for k in ("ours_nll_backward", "ref_nll_backward", "ours_decode", "ref_decode")}
    for i in range(args.warmup + args.repeats):
        row = {
            "ours_nll_backward": _time(lambda: nll_backward(ours, False), device),
            "ref_nll_backward": _time(lambda: nll_backward(ref, True), device),
            "ours_decode": _time(lambda: decode(ours, False), device),
            "ref_decode": _time(lambda: decode(ref, True), device),
        }
        if i >= args.warmup:
            for k, v in row.items():
                timings[k].append(v)

    med = {k: statistics.median(v) for k, v in timings.items()}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    result = {
        "device": str(device),
        "card": card,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "shape": [args.batch, args.steps, args.tags],
        "repeats": args.repeats,
        "max_loglik_diff": max_ll_diff,
        "paths_equal": paths_equal,
        **{f"{k}_ms": round(v, 3) for k, v in med.items()},
        "speedup_nll_backward": round(med["ref_nll_backward"] / med["ours_nll_backward"], 2),
        "speedup_decode": round(med["ref_decode"] / med["ours_decode"], 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
