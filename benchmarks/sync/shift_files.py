"""File-level check of a sync checkpoint: re-encode held-out clips with shifted audio, then estimate each file.

Unlike the evaluation (offsets injected into cached features), this writes real MP4 files (MPEG-4 video, AAC
audio) whose audio stream starts ``shift`` ms late (positive) or whose first ``-shift`` ms of audio are cut
(negative), and runs the same path as ``python predict.py run=<sync run> video=...`` on them.

    python benchmarks/sync/shift_files.py --run checkpoints/sync/<run> --video-dir ../shared/data/grid/video \
        --clips 10 --shifts=-400,-200,-120,0,120,200,400 --out /tmp/sync_shift
"""

import argparse
import json
import statistics
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from fusion.data.video_io import read_video
from fusion.eval.sync_estimate import estimate_file, load_sync_model, plot_path


def write_shifted(source: Path, target: Path, shift_ms: float) -> None:
    """Re-encodes ``source`` to MP4 with the audio moved by ``shift_ms`` (positive: audio late)."""
    decoded = read_video(source)
    rate = decoded.sample_rate
    audio = decoded.audio.numpy()  # (C, L)
    shift = round(shift_ms * rate / 1000.0)
    start_pts = max(shift, 0)
    if shift < 0:
        audio = audio[:, -shift:]
    with av.open(str(target), "w", format="mp4") as out:
        fps = Fraction(decoded.fps).limit_denominator(1001)
        video = out.add_stream("mpeg4", rate=fps)
        video.height, video.width = decoded.frames.shape[1:]
        video.pix_fmt = "yuv420p"
        video.options = {"qscale": "3"}
        stream = out.add_stream("aac", rate=rate, layout="stereo" if audio.shape[0] == 2 else "mono")
        for i, gray in enumerate(decoded.frames.numpy()):
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 1) / fps
            out.mux(video.encode(frame))
        out.mux(video.encode())
        size = stream.frame_size or 1024
        layout = "stereo" if audio.shape[0] == 2 else "mono"
        for offset in range(0, audio.shape[1], size):
            chunk = np.ascontiguousarray(audio[:, offset:offset + size].astype(np.float32))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start_pts + offset, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", "--ckpt", dest="ckpt", required=True, help="sync run folder (or its .ckpt)")
    parser.add_argument("--video-dir", required=True)
    parser.add_argument("--clips", type=int, default=10, help="first N held-out test clips of the run")
    parser.add_argument("--shifts", default="-400,-200,-120,0,120,200,400", help="audio shifts in ms")
    parser.add_argument("--out", default="/tmp/sync_shift")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, spec, _ = load_sync_model(args.ckpt, args.device)
    names = spec.get("test_clips", [])[: args.clips]
    if not names:
        raise SystemExit("the checkpoint's data_spec lists no test clips")
    shifts = [float(s) for s in args.shifts.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        source = next(Path(args.video_dir).glob(f"{name}.*"))
        for shift in shifts:
            target = out / f"{name}_{int(shift):+d}ms.mp4"
            write_shifted(source, target, shift)
            result = estimate_file(model, spec, target, args.device)
            rows.append({"file": target.name, "shift_ms": shift, "estimate_ms": result["offset_ms"],
                         "error_ms": result["offset_ms"] - shift})
            if name == names[0]:
                plot_path(result, spec["max_offset"], out / f"{target.stem}.png", f"{target.name}: true {shift:+.0f} ms")
            print(f"{target.name}: true {shift:+.0f} ms, estimated {result['offset_ms']:+.0f} ms")
    errors = [abs(r["error_ms"]) for r in rows]
    frame_ms = 1000.0 / 25.0
    summary = {"files": len(rows), "offset_mae_ms": statistics.mean(errors),
               "within_40ms": sum(e <= frame_ms + 1e-6 for e in errors) / len(errors),
               "median_abs_error_ms": statistics.median(errors)}
    (out / "results.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
