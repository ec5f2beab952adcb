"""The audio-video offset of one video file with a trained sync checkpoint, and its per-frame path plot.

Used by `predict.py run=<sync run> video=<file>|video_dir=<folder>` (fusion/inference/sync.py) and by the sync
evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fusion.data.face_track import TrackerConfig
from fusion.data.video_io import DEFAULT_MOUTH_BOX, load_sync_clip
from fusion.runtime.checkpoints import load_checkpoint_file
from fusion.temporal.sync import SyncModel

MODEL_ARGS = ("hidden_dim", "embed_dim", "max_jump", "frame_loss_weight", "dropout")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its best.ckpt, else last.ckpt) or a checkpoint file."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run folder '{path}' has no best.ckpt or last.ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    return path


def load_sync_model(ckpt: str | Path, device: str = "cpu") -> tuple[SyncModel, dict, Path]:
    """Rebuilds SyncModel from a SyncTask checkpoint (weights_only load).

    Returns:
        (model in eval mode, the data_spec it was trained with, the checkpoint path).
    """
    path = resolve_checkpoint(ckpt)
    data = load_checkpoint_file(path)
    hparams = data.get("hyper_parameters") or {}
    spec = hparams.get("data_spec")
    if not spec or "max_offset" not in spec:
        raise ValueError(f"checkpoint '{path}' is not a sync checkpoint (no data_spec with max_offset)")
    model = SyncModel(max_offset=spec["max_offset"], subframes=spec["subframes"], n_mels=spec["n_mels"],
                      crop_size=spec["crop_size"], **{k: hparams[k] for k in MODEL_ARGS if k in hparams})
    state = {k[len("model."):]: v for k, v in data["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.to(device).eval(), spec, path


def voice_activity(audio: torch.Tensor, subframes: int, threshold: float = 0.35, min_range: float = 3.0,
                   dilate: int = 2) -> torch.Tensor:
    """Energy voice-activity detector on log-mel features: (T * S, F) -> (T,) bool speech frames.

    A frame is speech when its log-energy exceeds the floor (10th percentile) by ``threshold`` of the range up
    to the loud level (95th percentile), dilated by ``dilate`` frames. Files whose range is below ``min_range``
    (natural log units, about 13 dB: constant noise or constant speech) count as speech throughout.
    """
    energy = torch.logsumexp(audio.float(), dim=-1).view(-1, subframes).mean(-1)  # (T,)
    floor, loud = torch.quantile(energy, 0.10), torch.quantile(energy, 0.95)
    if float(loud - floor) < min_range:
        return torch.ones_like(energy, dtype=torch.bool)
    active = (energy > floor + threshold * (loud - floor)).float()
    if dilate:
        active = torch.nn.functional.max_pool1d(active[None, None], 2 * dilate + 1, 1, dilate)[0, 0]
    return active.bool()


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> float:
    """The median of ``values`` (N,) under non-negative ``weights`` (N,) (the lower one at a tie)."""
    order = values.argsort()
    cumulative = weights[order].cumsum(0)
    return float(values[order][int(torch.searchsorted(cumulative, cumulative[-1] / 2))])


def chunked_emissions(model: SyncModel, video: torch.Tensor, audio: torch.Tensor, chunk: int) -> torch.Tensor:
    """Emissions (T, 2K+1) of a whole file in overlapping chunks of ``chunk`` frames (each frame from the chunk
    where it lies most centrally), so hour-long files fit in memory; video (T, h, w), audio (T, S*F)."""
    frames = video.shape[0]
    if frames <= chunk:
        return model.emissions(video[None], audio[None])[0]
    starts = list(range(0, frames - chunk, chunk // 2)) + [frames - chunk]
    centres = [start + chunk // 2 for start in starts]
    bounds = [0] + [(a + b) // 2 for a, b in zip(centres[:-1], centres[1:], strict=True)] + [frames]
    out = torch.empty(frames, model.num_states, device=video.device)
    for start, lo, hi in zip(starts, bounds[:-1], bounds[1:], strict=True):
        part = model.emissions(video[None, start:start + chunk], audio[None, start:start + chunk])[0]  # (C, 2K+1)
        out[lo:hi] = part[lo - start:hi - start]
    return out


@torch.no_grad()
def estimate_file(model: SyncModel, spec: dict, video_path: str | Path, device: str = "cpu",
                  chunk: int = 100) -> dict:
    """Per-frame offsets and the whole-file estimate of one video, counting only speech frames with a face.

    Emissions are computed in chunks of ``chunk`` frames (the model saw 44-frame windows in training; chunks of
    about 100 frames agree best on long files).

    The file is decoded as the model was trained (tracked mouth or fixed box; frames put on the model's frame
    rate). The Viterbi path runs over the whole file; the estimate is the median of the path over the frames
    whose face confidence is high and whose matched audio (frame t + offset(t)) is speech, weighted by the face
    confidence. The confidence is the weighted share of those frames whose offset lies within one frame of the
    estimate (1: the speech frames agree).

    Returns:
        {"offset_ms", "offset_frames", "confidence", "speech_frames", "face_frames", "path_frames" (T,),
        "emissions" (T, 2K+1), "used" (T,) bool, "fps", "source_fps"}.
    """
    clip = load_sync_clip(video_path, spec["sample_rate"], spec["n_mels"], spec["subframes"],
                          tuple(spec.get("mouth_box", DEFAULT_MOUTH_BOX)), (spec["crop_size"], spec["crop_size"]),
                          spec.get("mouth", "box"), TrackerConfig(**spec.get("tracker") or {}), spec.get("fps"))
    frames = clip["mouth"].shape[0]
    video = clip["mouth"].to(device)  # (T, h, w)
    audio = clip["audio"].view(frames, -1).to(device)  # (T, S*F)
    emissions = chunked_emissions(model, video, audio, chunk)  # (T, 2K+1)
    path = model.decode(video[None], audio[None], emissions=emissions[None])[0].cpu()  # (T,)
    speech = voice_activity(clip["audio"], spec["subframes"])  # (T,) by audio frame
    heard = (torch.arange(frames) + path.long()).clamp(0, frames - 1)
    face = clip["face"].float()
    weight = face * speech[heard].float() * (face >= 0.5).float()  # (T,)
    if float(weight.sum()) <= 0:  # no speech with a face: every frame counts, with no confidence
        weight, no_evidence = torch.ones(frames), True
    else:
        no_evidence = False
    offset = weighted_median(path, weight)
    agree = float((weight * ((path - offset).abs() <= 1.0).float()).sum() / weight.sum())
    return {"offset_ms": offset * 1000.0 / clip["fps"], "offset_frames": offset,
            "confidence": 0.0 if no_evidence else agree, "speech_frames": int(speech.sum()),
            "face_frames": int((face >= 0.5).sum()), "path_frames": path, "emissions": emissions.cpu(),
            "used": weight > 0, "fps": clip["fps"], "source_fps": clip["source_fps"]}


def plot_path(result: dict, max_offset: int, out: str | Path, title: str = "") -> None:
    """Emission scores (frames x offsets) with the decoded path on top, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fps = result["fps"]
    ms_per_frame = 1000.0 / fps
    emissions = result["emissions"].t().numpy()  # (2K+1, T)
    frames = emissions.shape[1]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.imshow(emissions, aspect="auto", origin="lower", cmap="viridis",
              extent=(-0.5, frames - 0.5, (-max_offset - 0.5) * ms_per_frame, (max_offset + 0.5) * ms_per_frame))
    path = result["path_frames"].numpy() * ms_per_frame
    ax.plot(range(frames), path, color="red", lw=1, alpha=0.6, label="Viterbi path")
    if "used" in result:  # the frames the estimate counts (speech with a face)
        used = result["used"].numpy()
        ax.plot(np.flatnonzero(used), path[used], "o", color="red", ms=3, label="speech frames with a face")
    ax.axhline(result["offset_ms"], color="white", ls="--", lw=1)
    ax.set_xlabel("video frame")
    ax.set_ylabel("offset (ms, audio late > 0)")
    heading = f"estimated offset {result['offset_ms']:+.0f} ms"
    if "confidence" in result:
        heading += f", confidence {result['confidence']:.2f}"
    ax.set_title(f"{title}: {heading}" if title else heading)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)

