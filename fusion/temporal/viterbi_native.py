"""Compiled Viterbi decoding on the CPU (one fused pass per step), built on first use.

`viterbi_kernel.c` beside this file is compiled once with the system C compiler (`$CC`, else `cc`) into a cache
folder (`$FUSION_HOME/cache/kernels`), keyed by the source, the flags and this CPU, and loaded with
ctypes. Without a compiler, or with `FUSION_NATIVE_CRF=0`, `load_kernel()` returns None and the CRF keeps its
torch implementation: both give the same paths.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from fusion.files import atomic_write, fusion_home

SOURCE = Path(__file__).with_name("viterbi_kernel.c")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]


def _cpu_identity() -> str:
    """The CPU model and feature flags (the kernel is built for this CPU with -march=native)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return fusion_home() / "cache" / "kernels"


@cache
def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel (built once per machine), or None where it is disabled or cannot be built."""
    if os.environ.get("FUSION_NATIVE_CRF", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_identity().encode()).hexdigest()[:16]
    library = _cache_dir() / f"viterbi-{key}.so"
    try:
        if not library.exists():
            with tempfile.TemporaryDirectory() as tmp:
                built = Path(tmp) / library.name
                subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], check=True, capture_output=True,
                               text=True, timeout=120)
                with atomic_write(library, "wb") as f:  # a concurrent build just replaces an identical file
                    f.write(built.read_bytes())
        kernel = ctypes.CDLL(str(library))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        warnings.warn(f"compiled Viterbi kernel unavailable, using the torch decoder ({detail})", stacklevel=2)
        return None
    kernel.fusion_viterbi.restype = None
    kernel.fusion_viterbi.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2
    return kernel


def viterbi_decode(kernel: ctypes.CDLL, emissions: Tensor, start: Tensor, transitions: Tensor, end: Tensor,
                   lengths: Tensor, pad_value: int) -> Tensor:
    """Best paths with the compiled kernel (one thread: the work per step is too small to split).

    Args:
        emissions: (B, T, K) CPU scores (cast to contiguous float32).
        start, end: (K,) start/end scores; transitions: (K, K) [from, to], -inf for forbidden moves.
        lengths: (B,) sequence lengths (right padding), each in [1, T].

    Returns:
        (B, T) int64 best tags, ``pad_value`` after each sequence's end.
    """
    batch, steps, tags = emissions.shape
    emissions = emissions.detach().to(torch.float32).contiguous()
    start, transitions, end = (x.detach().to(torch.float32).contiguous() for x in (start, transitions, end))
    lengths = lengths.to(torch.int64).contiguous()
    paths = torch.full((batch, steps), pad_value, dtype=torch.int64)
    scores = torch.empty(steps, tags, dtype=torch.float32)  # (T, K) max-sum scores of one sequence at a time
    kernel.fusion_viterbi(emissions.data_ptr(), transitions.data_ptr(), start.data_ptr(), end.data_ptr(),
                          lengths.data_ptr(), batch, steps, tags, scores.data_ptr(), paths.data_ptr())
    return paths
