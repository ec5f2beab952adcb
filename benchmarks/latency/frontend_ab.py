"""The log-mel STFT in the ONNX graph: ONNX Runtime's STFT op against the strided DFT convolution of the product
(`LogMel.dft_power`), side by side in one process on the 2-core CPU.

Each run is exported twice, once with `LogMel.power_mel` computing the STFT with `torch.stft` (exported as the STFT
op) and once as the product exports it; both graphs get the same batch-1 input, in interleaved rounds of timed
calls. Reports each p50 (median over rounds), the median ratio within a round, and the largest logit difference.

    python benchmarks/latency/frontend_ab.py --runs $EARLY $LATE $PROGRESSIVE --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from fusion.encoders.audio import LogMel
from fusion.eval.run_folder import load_run
from fusion.inference.onnx_export import example_inputs, export_onnx
from fusion.inference.preprocessing import Preprocessing


def stft_power_mel(self: LogMel, wave: torch.Tensor) -> torch.Tensor:
    """`LogMel.power_mel` with `torch.stft` also under export (the ONNX STFT op)."""
    s = self.mel.spectrogram
    spec = torch.stft(wave, s.n_fft, s.hop_length, s.win_length, s.window, s.center, s.pad_mode, normalized=False,
                      onesided=s.onesided, return_complex=True)  # (B, F, T)
    power = torch.view_as_real(spec).square().sum(-1)
    return (power.transpose(1, 2) @ self.mel.mel_scale.fb).transpose(1, 2)  # (B, M, T)


def sessions_for(run_dir: str, folder: Path, threads: int) -> tuple[dict, dict]:
    run = load_run(run_dir)
    prep = Preprocessing.from_run_config(run.config, run.data_spec["modalities"])
    model = run.model.eval()
    product = LogMel.power_mel
    sessions = {}
    try:
        for name, power_mel in (("stft_op", stft_power_mel), ("dft_conv", product)):
            LogMel.power_mel = power_mel
            export_onnx(model, folder / f"{name}.onnx", example_inputs(prep, 2))
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            sessions[name] = ort.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                  providers=["CPUExecutionProvider"])
    finally:
        LogMel.power_mel = product
    single = example_inputs(prep, 1)
    return sessions, {i.name: single[i.name].numpy() for i in sessions["stft_op"].get_inputs()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders with an audio tower")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=200, help="timed calls per round")
    args = parser.parse_args()
    for run_dir in args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            sessions, feeds = sessions_for(run_dir, Path(tmp), args.threads)
            logits = {name: session.run(None, feeds)[0] for name, session in sessions.items()}
            p50s = {name: [] for name in sessions}
            for round_ in range(args.rounds):
                for name in list(sessions) if round_ % 2 == 0 else list(reversed(sessions)):
                    for _ in range(20):  # warm-up
                        sessions[name].run(None, feeds)
                    times = []
                    for _ in range(args.iters):
                        start = time.perf_counter()
                        sessions[name].run(None, feeds)
                        times.append(1000 * (time.perf_counter() - start))
                    p50s[name].append(statistics.median(times))
        ratio = statistics.median(b / a for a, b in zip(p50s["stft_op"], p50s["dft_conv"], strict=True))
        print(f"{run_dir} ({args.threads} thread(s)): p50 STFT op {statistics.median(p50s['stft_op']):.3f} ms, "
              f"DFT convolution {statistics.median(p50s['dft_conv']):.3f} ms, median ratio within a round "
              f"{ratio:.3f}, max logit difference {float(np.abs(logits['stft_op'] - logits['dft_conv']).max()):.1e}",
              flush=True)


if __name__ == "__main__":
    main()
