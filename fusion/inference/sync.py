"""Offsets of whole video files with a trained sync run: one row per file (file, offset_ms, offset_frames,
confidence, speech and face frames), optionally the per-frame path over the emission scores as a PNG per file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fusion.data.sync_data import VIDEO_EXTENSIONS
from fusion.errors import MissingFileError, UserError
from fusion.eval.sync_estimate import estimate_file, load_sync_model, plot_path
from fusion.temporal.sync import SyncModel

log = logging.getLogger(__name__)

COLUMNS = ["file", "offset_ms", "offset_frames", "confidence", "speech_frames", "face_frames", "frames", "fps"]


def video_files(videos: str | Path | list) -> list[Path]:
    """A video file, a folder (searched recursively for VIDEO_EXTENSIONS) or a list of files."""
    if isinstance(videos, list | tuple):
        return [p for v in videos for p in video_files(v)]
    path = Path(videos).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            raise MissingFileError(f"'{path}' has no video files ({', '.join(VIDEO_EXTENSIONS)})")
        return files
    if not path.is_file():
        raise MissingFileError(f"video file '{path}' does not exist")
    return [path]


@dataclass
class SyncPredictor:
    """A trained SyncModel with the data settings it was trained with."""

    model: SyncModel
    spec: dict
    folder: Path
    device: str = "cpu"
    kind: str = "sync"

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SyncPredictor:
        model, spec, checkpoint = load_sync_model(path, device)
        return cls(model, spec, checkpoint.parent, device)

    def predict(self, videos: str | Path | list, plot_dir: str | Path | None = None, on_error: str = "raise"):
        """Whole-file offset of every video (median of the Viterbi path over speech frames with a face).

        Args:
            videos: a video file, a folder of them or a list.
            plot_dir: where to write `<file stem>.png` with the per-frame path (None: no plots).
            on_error: "raise" or "skip" (an undecodable file is logged and left out).

        Returns:
            A DataFrame with `file`, `offset_ms` (positive: audio late), `offset_frames`, `confidence` (share of
            the speech frames that agree with the estimate within one frame; 0: no speech with a face),
            `speech_frames`, `face_frames`, `frames` and `fps` (the file's frame rate).
        """
        import pandas as pd

        rows = []
        for path in video_files(videos):
            try:
                result = estimate_file(self.model, self.spec, path, self.device)
            except UserError as err:
                if on_error == "raise":
                    raise
                log.warning("skipped %s", err)
                continue
            rows.append({"file": str(path), "offset_ms": result["offset_ms"], "offset_frames": result["offset_frames"],
                         "confidence": result["confidence"], "speech_frames": result["speech_frames"],
                         "face_frames": result["face_frames"], "frames": int(result["path_frames"].shape[0]),
                         "fps": result["source_fps"]})
            if plot_dir is not None:
                Path(plot_dir).mkdir(parents=True, exist_ok=True)
                plot_path(result, self.spec["max_offset"], Path(plot_dir) / f"{path.stem}.png", path.name)
        return pd.DataFrame(rows, columns=COLUMNS)
