"""File-level check of a sync checkpoint: re-encode held-out clips with shifted audio, then estimate each file.

Unlike the evaluation (offsets injected into cached features), this writes real files (MP4: MPEG-4 video + AAC
audio; WebM: VP9 + Opus at 48 kHz) whose audio stream starts ``shift`` ms late (positive) or whose first
``-shift`` ms of audio are cut (negative), and runs the same whole-file estimator as ``python predict.py
run=<sync run> video=...`` on them (speech frames with a face only; the median over all frames is reported
beside it as ``all_frames``).

    python benchmarks/sync/shift_files.py --run checkpoints/sync/<run> --video-dir ../shared/data/grid/video \
        --clips 0 --codecs mp4,webm --shifts=-400,-200,-120,0,120,200,400 --out /tmp/sync_shift
"""

import argparse
import json
import statistics
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio

from fusion.data.video_io import read_video
from fusion.eval.sync_estimate import estimate_file, load_sync_model, plot_path

CODECS = {  # container: (format, video codec, video options, audio codec, audio rate or None = the source's)
    "mp4": ("mp4", "mpeg4", {"qscale": "3"}, "aac", None),
    "webm": ("webm", "libvpx-vp9", {"crf": "35", "b": "0", "deadline": "realtime", "cpu-used": "8"}, "libopus", 48000),
}


def write_shifted(source: Path, target: Path, shift_ms: float, codec: str = "mp4") -> None:
    """Re-encodes ``source`` (MP4/AAC or WebM/VP9+Opus) with the audio moved by ``shift_ms`` (positive: late)."""
    fmt, vcodec, voptions, acodec, arate = CODECS[codec]
    decoded = read_video(source)
    rate = arate or decoded.sample_rate
    audio = decoded.audio
    if rate != decoded.sample_rate:
        audio = torchaudio.functional.resample(audio, decoded.sample_rate, rate)
    audio = audio.numpy()  # (C, L)
    shift = round(shift_ms * rate / 1000.0)
    start_pts = max(shift, 0)
    if shift < 0:
        audio = audio[:, -shift:]
    layout = "stereo" if audio.shape[0] == 2 else "mono"
    with av.open(str(target), "w", format=fmt) as out:
        fps = Fraction(decoded.fps).limit_denominator(1001)
        video = out.add_stream(vcodec, rate=fps)
        video.height, video.width = decoded.frames.shape[1:]
        video.pix_fmt = "yuv420p"
        video.options = voptions
        stream = out.add_stream(acodec, rate=rate, layout=layout)
        for i, gray in enumerate(decoded.frames.numpy()):
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 1) / fps
            out.mux(video.encode(frame))
        out.mux(video.encode())
        size = stream.frame_size or 1024
        for offset in range(0, audio.shape[1], size):
            chunk = np.ascontiguousarray(audio[:, offset:offset + size].astype(np.float32))
            if chunk.shape[1] < size and acodec == "libopus":  # opus takes whole frames only
                chunk = np.pad(chunk, ((0, 0), (0, size - chunk.shape[1])))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start_pts + offset, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def summarise(errors: list[float], frame_ms: float) -> dict:
    return {"files": len(errors), "offset_mae_ms": statistics.mean(errors),
            "within_40ms": sum(e <= frame_ms + 1e-6 for e in errors) / len(errors),
            "median_abs_error_ms": statistics.median(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", "--ckpt", dest="ckpt", required=True, help="sync run folder (or its .ckpt)")
    parser.add_argument("--video-dir", required=True)
    parser.add_argument("--clips", type=int, default=10, help="first N held-out test clips of the run (0 = all)")
    parser.add_argument("--codecs", default="mp4", help="comma-separated: mp4 (MPEG-4 + AAC), webm (VP9 + Opus)")
    parser.add_argument("--shifts", default="-400,-200,-120,0,120,200,400", help="audio shifts in ms")
    parser.add_argument("--out", default="/tmp/sync_shift")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, spec, _ = load_sync_model(args.ckpt, args.device)
    names = spec.get("test_clips", [])[: args.clips or None]
    if not names:
        raise SystemExit("the checkpoint's data_spec lists no test clips")
    shifts = [float(s) for s in args.shifts.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for codec in args.codecs.split(","):
        for name in names:
            source = next(Path(args.video_dir).glob(f"{name}.*"))
            for shift in shifts:
                target = out / f"{name}_{int(shift):+d}ms.{codec}"
                if not target.is_file():
                    write_shifted(source, target, shift, codec)
                result = estimate_file(model, spec, target, args.device)
                plain = float(result["path_frames"].median()) * 1000.0 / result["fps"]  # every frame, unweighted
                rows.append({"file": target.name, "codec": codec, "shift_ms": shift, "estimate_ms": result["offset_ms"],
                             "error_ms": result["offset_ms"] - shift, "confidence": result["confidence"],
                             "all_frames_error_ms": plain - shift})
                if name == names[0]:
                    plot_path(result, spec["max_offset"], out / f"{target.stem}_{codec}.png",
                              f"{target.name}: true {shift:+.0f} ms")
                print(f"{target.name}: true {shift:+.0f} ms, estimated {result['offset_ms']:+.0f} ms "
                      f"(confidence {result['confidence']:.2f}; all frames {plain:+.0f} ms)", flush=True)
    frame_ms = 1000.0 / spec["fps"]
    summary = {}
    for codec in [*args.codecs.split(","), "all"]:
        picked = [r for r in rows if codec in ("all", r["codec"])]
        summary[codec] = summarise([abs(r["error_ms"]) for r in picked], frame_ms)
        summary[codec]["all_frames"] = summarise([abs(r["all_frames_error_ms"]) for r in picked], frame_ms)
        wrong = [r["confidence"] for r in picked if abs(r["error_ms"]) > frame_ms + 1e-6]
        right = [r["confidence"] for r in picked if abs(r["error_ms"]) <= frame_ms + 1e-6]
        summary[codec]["mean_confidence_right"] = statistics.mean(right) if right else None
        summary[codec]["mean_confidence_wrong"] = statistics.mean(wrong) if wrong else None
    (out / "results.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
