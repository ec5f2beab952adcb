"""Predict with a finished run: `python predict.py run=<run folder> data.manifest=new.csv`; see recipes/predict.yaml.

Classification runs write `predictions.csv` (row, pred, prob/<class>, gate/<stage>/<modality>), and with
`attention_maps=N` (cross-attention runs) `attention/row<k>.png` for the first N rows; sync runs (recipe=sync)
write `sync_predictions.csv` (file, offset_ms, offset_frames, confidence, ...) and one path plot per file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fusion.commands.app import recipes_dir, reports_user_errors, route_lightning_logs_to_root
from fusion.errors import ConfigError
from fusion.files import atomic_write

log = logging.getLogger("fusion")

EXAMPLE_KEYS = ("image", "audio", "text")


def single_example(cfg: DictConfig) -> dict[str, str]:
    """The example given as image=/audio=/text= (empty when none is)."""
    return {key: str(cfg.get(key)) for key in EXAMPLE_KEYS if cfg.get(key) is not None}


def write_csv(frame, path: Path) -> None:
    with atomic_write(path) as f:
        frame.to_csv(f, index=False)


@reports_user_errors
def run(cfg: DictConfig):
    """Predicts as recipes/predict.yaml describes; returns the predictions DataFrame."""
    from fusion.inference.loading import load

    route_lightning_logs_to_root()
    if cfg.get("run") in (None, "", "???"):
        raise ConfigError("run= needs a run folder of train.py or an export folder of export.py")
    predictor = load(cfg.run, backend=cfg.get("backend"), device=str(cfg.get("device") or "cpu"))
    out = Path(cfg.out).expanduser() if cfg.get("out") else Path(predictor.folder)
    out.mkdir(parents=True, exist_ok=True)
    if predictor.kind == "sync":
        return predict_sync(cfg, predictor, out)
    example, manifest = single_example(cfg), cfg.data.get("manifest")
    if bool(example) == bool(manifest):
        raise ConfigError("give either data.manifest=<csv or jsonl> or one example as image=, audio=, text= "
                          f"(the model reads {predictor.preprocessing.modalities})")
    maps = int(cfg.get("attention_maps") or 0)
    if maps > 0:
        from fusion.inference.attention import check_attention_maps

        check_attention_maps(predictor)  # before the predictions, not after them
    frame = predictor.predict(manifest or example, batch_size=int(cfg.data.batch_size), on_error=str(cfg.data.on_error))
    path = out / "predictions.csv"
    write_csv(frame, path)
    problems = frame.attrs.get("skipped_problems") or []
    if problems:
        from fusion.data.datamodule import write_skip_report

        write_skip_report(out / "skipped_rows.csv", problems)
        log.info("skipped rows: %s", out / "skipped_rows.csv")
    from fusion.inference.predictor import summary

    report = summary(frame)
    if example:
        probs = {column[len("prob/"):]: round(float(frame[column][0]), 4) for column in frame if column.startswith("prob/")}
        log.info("prediction: %s (probabilities %s)", frame["pred"][0], json.dumps(probs))
    log.info("summary: %s", json.dumps(report))
    log.info("predictions: %s", path)
    if maps > 0:
        from fusion.inference.attention import write_attention_maps

        pictures = write_attention_maps(predictor, manifest or example, out / "attention", maps,
                                        int(cfg.data.batch_size), str(cfg.data.on_error))
        log.info("attention maps: %d pictures in %s", len(pictures), out / "attention")
    return frame


def predict_sync(cfg: DictConfig, predictor, out: Path):
    """Offsets of `video=` or every file under `video_dir=`."""
    videos = cfg.get("video") or cfg.get("video_dir")
    if not videos or (cfg.get("video") and cfg.get("video_dir")):
        raise ConfigError("a sync run predicts the offset of video=<file> or of every file in video_dir=<folder>")
    frame = predictor.predict(str(videos), plot_dir=out / "sync_paths" if cfg.get("plot", True) else None,
                              on_error=str(cfg.data.on_error))
    path = out / "sync_predictions.csv"
    write_csv(frame, path)
    for row in frame.itertuples():
        late = "audio late" if row.offset_ms > 0 else "audio early" if row.offset_ms < 0 else "in sync"
        log.info("%s: offset %+.0f ms (%s; %+.1f frames; confidence %.2f)", row.file, row.offset_ms, late,
                 row.offset_frames, row.confidence)
    log.info("predictions: %s%s", path, f"; path plots in {out / 'sync_paths'}" if cfg.get("plot", True) else "")
    return frame


@hydra.main(config_path=str(recipes_dir()), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
