"""Sync checkpoints on re-framed copies of held-out clips: zoomed, shifted, other resolution, other frame rate.

Every held-out test clip of the first run is re-encoded (MP4: MPEG-4 video, AAC audio) under each condition,
decoded as each run decodes (tracked mouth or its fixed box, put on the run's frame rate), and scored with the
same seeded windows as ``evaluate.py`` (per clip 4 constant offsets in [-K, K] and 4 drift paths, the centred
44-frame window, ``data.eval_seed=0``). Writes ``results.json`` (metrics per run and condition) and
``per_clip.csv`` (constant-offset error per run, condition and clip).

    python benchmarks/sync/reframe.py --runs box=checkpoints/sync/box track=checkpoints/sync/track \
        --video-dir ../shared/data/grid/video --out /tmp/sync_reframe

Conditions: ``original`` (the source file), ``zoom0.7``/``zoom1.3`` (the picture scaled about its centre; 0.7
shows black borders), ``left``/``right``/``up`` (content moved by 20 % of the frame), ``down`` (10 %: 20 %
cuts the chin of GRID's framing), ``640x480``/``320x240``, ``fps30`` (frames resampled to 30 fps by nearest
time) and ``mixed`` (per clip: zoom 0.7-1.3, shift up to 20 % each way limited to keep the mouth in the frame,
360x288, 640x480 or 320x240, 25 or 30 fps; seeded).
"""

import argparse
import csv
import hashlib
import json
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from fusion.data.face_track import TrackerConfig
from fusion.data.sync_data import FixedOffsetWindows
from fusion.data.video_io import DEFAULT_MOUTH_BOX, load_sync_clip, read_video
from fusion.eval.sync_estimate import load_sync_model
from fusion.eval.sync_eval import clip_breakdown, posterior_metrics, predict_windows
from fusion.temporal.metrics import sync_report

CONDITIONS = {  # zoom, (shift x, shift y) as fractions of the output frame, (width, height) or None, fps or None
    "original": None,
    "zoom0.7": (0.7, (0.0, 0.0), None, None),
    "zoom1.3": (1.3, (0.0, 0.0), None, None),
    "left": (1.0, (-0.2, 0.0), None, None),
    "right": (1.0, (0.2, 0.0), None, None),
    "up": (1.0, (0.0, -0.2), None, None),
    "down": (1.0, (0.0, 0.1), None, None),
    "640x480": (1.0, (0.0, 0.0), (640, 480), None),
    "320x240": (1.0, (0.0, 0.0), (320, 240), None),
    "fps30": (1.0, (0.0, 0.0), None, 30.0),
}
MOUTH_CENTRE = (0.467, 0.73)  # GRID mouth box centre (x, y) as fractions of the source frame


def mixed_condition(rng: random.Random) -> tuple:
    """A random re-framing whose mouth box stays inside the frame."""
    zoom = rng.uniform(0.7, 1.3)
    size = rng.choice([None, (640, 480), (320, 240)])
    fps = rng.choice([None, 30.0])
    shift = [rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)]
    for axis, (centre, half) in enumerate(zip(MOUTH_CENTRE, (0.16, 0.16), strict=True)):
        # mouth centre in the output: 0.5 + zoom * (centre - 0.5) + shift; keep it half a mouth box inside
        position = 0.5 + zoom * (centre - 0.5)
        shift[axis] = float(np.clip(shift[axis], half * zoom - position, 1 - half * zoom - position))
    return zoom, tuple(shift), size, fps


def reframe(source: Path, target: Path, zoom: float, shift: tuple[float, float], size, fps) -> None:
    """Writes ``source`` re-framed (scaled about the centre, moved, resized, re-timed) as MP4 with AAC audio."""
    import cv2

    decoded = read_video(source)
    height, width = decoded.frames.shape[1:]
    out_w, out_h = size or (width, height)
    scale = zoom * out_h / height
    matrix = np.array([[scale, 0, out_w / 2 + shift[0] * out_w - scale * width / 2],
                       [0, scale, out_h / 2 + shift[1] * out_h - scale * height / 2]])
    rate_in = decoded.fps
    rate_out = fps or rate_in
    count = int(decoded.frames.shape[0] * rate_out / rate_in + 1e-6)
    picks = np.minimum(np.round(np.arange(count) * rate_in / rate_out).astype(int), decoded.frames.shape[0] - 1)
    audio = decoded.audio.numpy()
    layout = "stereo" if audio.shape[0] == 2 else "mono"
    with av.open(str(target), "w", format="mp4") as out:
        time_base = Fraction(rate_out).limit_denominator(1001)
        video = out.add_stream("mpeg4", rate=time_base)
        video.width, video.height, video.pix_fmt = out_w, out_h, "yuv420p"
        video.options = {"qscale": "3"}
        stream = out.add_stream("aac", rate=decoded.sample_rate, layout=layout)
        for i, index in enumerate(picks):
            gray = cv2.warpAffine(decoded.frames[index].numpy(), matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2), format="rgb24")
            frame.pts, frame.time_base = i, 1 / time_base
            out.mux(video.encode(frame))
        out.mux(video.encode())
        chunk = stream.frame_size or 1024
        for offset in range(0, audio.shape[1], chunk):
            part = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, offset:offset + chunk]), format="fltp",
                                              layout=layout)
            part.sample_rate, part.pts, part.time_base = decoded.sample_rate, offset, Fraction(1, decoded.sample_rate)
            out.mux(stream.encode(part))
        out.mux(stream.encode())


def decode_for(spec: dict, path: Path) -> dict:
    """A file decoded the way a run was trained (mouth mode, tracker, frame rate), as a clip of the windows."""
    clip = load_sync_clip(path, spec["sample_rate"], spec["n_mels"], spec["subframes"],
                          tuple(spec.get("mouth_box", DEFAULT_MOUTH_BOX)), (spec["crop_size"], spec["crop_size"]),
                          spec.get("mouth", "box"), TrackerConfig(**spec.get("tracker", {})), spec["fps"])
    return {"name": path.stem, "mouth": clip["mouth"], "audio": clip["audio"], "fps": clip["fps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="name=run folder (its best.ckpt) pairs")
    parser.add_argument("--video-dir", required=True)
    parser.add_argument("--conditions", default=",".join([*CONDITIONS, "mixed"]))
    parser.add_argument("--clips", type=int, default=0, help="first N test clips (0 = all)")
    parser.add_argument("--out", default="/tmp/sync_reframe")
    args = parser.parse_args()
    torch.manual_seed(0)
    runs = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        runs[name] = load_sync_model(folder)[:2]
    first = next(iter(runs.values()))[1]
    names = first["test_clips"][: args.clips or None]
    for name, (_, spec) in runs.items():
        if set(names) - set(spec["test_clips"]):
            raise SystemExit(f"run {name} trained on some test clips of the first run: pick runs with one split")
    out = Path(args.out)
    rng = random.Random(0)
    results, rows = {}, []
    for condition in args.conditions.split(","):
        folder = out / condition
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for clip in names:
            source = next(Path(args.video_dir).glob(f"{clip}.*"))
            setting = mixed_condition(rng) if condition == "mixed" else CONDITIONS[condition]
            if setting is None:
                files.append(source)
                continue
            target = folder / f"{clip}.mp4"
            if not target.is_file():
                reframe(source, target, *setting)
            files.append(target)
        decoded = {}
        for run, (model, spec) in runs.items():
            key = json.dumps([spec.get("mouth", "box"), spec.get("tracker"), spec.get("mouth_box"), spec["fps"],
                              [str(f) for f in files]], sort_keys=True)
            if key not in decoded:  # decoded once per decoding setting, kept beside the files for later runs
                stored = folder / f"decoded-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
                if stored.is_file():
                    decoded[key] = torch.load(stored, weights_only=True)
                else:
                    decoded[key] = [decode_for(spec, f) for f in files]
                    torch.save(decoded[key], stored)
            clips = decoded[key]
            windows = FixedOffsetWindows(clips, spec["window"], spec["max_offset"], spec["subframes"], 0, 4, True,
                                         3.0, 10.0)
            loader = torch.utils.data.DataLoader(windows, batch_size=32)
            outputs = predict_windows(model, loader, "cpu", spec["max_offset"], spec["subframes"])
            metrics = sync_report(outputs["paths"], outputs["truth"], outputs["drift"], outputs["baseline"], spec["fps"])
            metrics |= posterior_metrics(outputs, spec["fps"])
            results.setdefault(run, {})[condition] = metrics
            for row in clip_breakdown(outputs, [c["name"] for c in clips], spec["fps"]):
                rows.append({"run": run, "condition": condition, **row})
            print(f"{run:>12s} {condition:>9s}: MAE {metrics['offset_mae_ms']:6.1f} ms, within 1 frame "
                  f"{metrics['within_40ms']:.1%}, drift heard within 1 frame {metrics['drift_heard/within_40ms']:.1%} "
                  f"(posterior mean {metrics['posterior/drift_heard/within_40ms']:.1%})",
                  flush=True)
    for by_condition in results.values():
        reframed = [m for c, m in by_condition.items() if c != "original"]
        if reframed:
            by_condition["all_reframed"] = {
                "offset_mae_ms": float(np.mean([m["offset_mae_ms"] for m in reframed])),
                "within_40ms": float(np.mean([m["within_40ms"] for m in reframed])),
                "drift_heard/within_40ms": float(np.mean([m["drift_heard/within_40ms"] for m in reframed])),
                "posterior/drift_heard/within_40ms": float(np.mean([m["posterior/drift_heard/within_40ms"]
                                                                    for m in reframed]))}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with open(out / "per_clip.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(json.dumps({run: m.get("all_reframed") for run, m in results.items()}, indent=2))


if __name__ == "__main__":
    main()
