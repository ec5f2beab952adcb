"""Safe checkpoint loading: tensors and plain containers only (weights_only=True), clear errors per file."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKSUM_KEY = "tensor_crc32"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated, or carries pickled code; the message names the file."""


def tensor_checksum(obj: Any) -> int:
    """CRC32 over the bytes of every tensor in a nested dict/list/tuple, in a fixed order (keys sorted).

    torch.load checks the zip structure but not the tensor bytes, so flipped bits in a stored tensor would
    load silently; files written by `fusion.checkpoint_io` carry this checksum and are verified on load.
    """
    crc = 0

    def visit(value: Any, where: str) -> None:
        nonlocal crc
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            crc = zlib.crc32(f"{where}:{value.dtype}:{tuple(value.shape)}".encode(), crc)
            crc = zlib.crc32(data, crc)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if key != CHECKSUM_KEY:
                    visit(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{where}/{i}")

    visit(obj, "")
    return crc


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    """Loads a checkpoint with `weights_only=True` (on the CPU unless `map_location` says otherwise).

    Raises:
        CheckpointError: naming the file, if it is missing, truncated/corrupt, or not weights-only.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        data = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it carries objects other than tensors and plain containers "
            f"(pickled code is never executed). Details: {str(err).splitlines()[0]}") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, IndexError, KeyError ... on damaged files
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt and cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no details'})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint '{path}' does not hold a dict of weights")
    if CHECKSUM_KEY in data:
        stored, actual = data.pop(CHECKSUM_KEY), tensor_checksum(data)
        if stored != actual:
            raise CheckpointError(f"checkpoint '{path}' is corrupt: its tensors do not match the checksum written "
                                  f"with them (stored {stored:#010x}, computed {actual:#010x})")
    return data


def load_matching_weights(module: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Copies every weight of the checkpoint whose name and shape match `module` (fine-tuning / init_from).

    Weights whose shape differs (e.g. a classifier head for another label set) keep their fresh init.

    Returns:
        {"loaded": [...], "skipped_shape": [...], "missing": [...]} parameter names.
    """
    state = load_checkpoint_file(path)
    state = state.get("state_dict", state)
    own = module.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    if not loaded:
        raise CheckpointError(f"init_from '{path}': no weight matches this model by name and shape")
    module.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded),
            "skipped_shape": sorted(k for k in state if k in own and k not in loaded),
            "missing": sorted(k for k in own if k not in state)}


RESUME_KEYS = ("state_dict", "loops", "optimizer_states", "global_step", "epoch")


def check_resume_checkpoint(module: nn.Module, path: str | Path) -> dict:
    """Checks, before Lightning touches it, that `path` is a full training checkpoint of this model.

    Returns:
        The loaded checkpoint.

    Raises:
        CheckpointError: naming the file, if it cannot be read safely, is a weights-only file (use init_from),
            or its weights do not fit `module` (other recipe, other data modalities or classes).
    """
    data = load_checkpoint_file(path)
    missing = [k for k in RESUME_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"ckpt_path '{path}' is not a full training checkpoint (missing {missing}); "
                              "to start a new run from its weights use init_from= instead")
    state = data["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"ckpt_path '{path}': 'state_dict' is not a dict of tensors")
    own = module.state_dict()
    absent = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    reshaped = sorted(k for k in own if k in state and tuple(getattr(state[k], 'shape', ())) != tuple(own[k].shape))
    if absent or unexpected or reshaped:
        details = "; ".join(f"{name}: {keys[:3]}{' ...' if len(keys) > 3 else ''}" for name, keys in
                            (("not in the file", absent), ("not in the model", unexpected),
                             ("other shape", reshaped)) if keys)
        raise CheckpointError(f"ckpt_path '{path}' does not match this model ({details}); resume with the "
                              "recipe and data it was trained with, or fine-tune with init_from=")
    return data
