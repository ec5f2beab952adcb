"""Using a trained model: load a run or export folder, predict on new data, export to safetensors and ONNX.

One concept per module: `preprocessing` (what inputs the model expects), `examples` (manifest, DataFrame or
dict -> validated, decoded batches), `predictor` (batches -> the predictions DataFrame), `integrity` (sha256
of exported files), `safetensors_export`, `onnx_export`, `onnx_runner`, `loading` (`fusion.load`) and
`sync` (offsets of whole video files for sync runs).
"""
