"""The audio-video offset of one video file with a trained sync checkpoint, and its per-frame path plot.

Used by `predict.py run=<sync run> video=<file>|video_dir=<folder>` (fusion/inference/sync.py) and by the sync
evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fusion.data.video_io import load_sync_clip
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


@torch.no_grad()
def estimate_file(model: SyncModel, spec: dict, video_path: str | Path, device: str = "cpu") -> dict:
    """Per-frame offsets and the clip estimate (median) of one file.

    Returns:
        {"offset_ms", "offset_frames", "path_frames" (T,), "emissions" (T, 2K+1), "fps"}.
    """
    clip = load_sync_clip(video_path, spec["sample_rate"], spec["n_mels"], spec["subframes"],
                          tuple(spec["mouth_box"]), (spec["crop_size"], spec["crop_size"]))
    frames = clip["mouth"].shape[0]
    video = clip["mouth"][None].to(device)  # (1, T, h, w)
    audio = clip["audio"].view(1, frames, -1).to(device)  # (1, T, S*F)
    emissions = model.emissions(video, audio)  # (1, T, 2K+1)
    path = model.decode(video, audio, emissions=emissions)[0].cpu()  # (T,)
    offset = float(path.median())
    return {"offset_ms": offset * 1000.0 / clip["fps"], "offset_frames": offset, "path_frames": path,
            "emissions": emissions[0].cpu(), "fps": clip["fps"]}


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
    ax.plot(range(frames), result["path_frames"].numpy() * ms_per_frame, color="red", lw=2, label="Viterbi path")
    ax.set_xlabel("video frame")
    ax.set_ylabel("offset (ms, audio late > 0)")
    ax.set_title(title or f"estimated offset {result['offset_ms']:+.0f} ms")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)

