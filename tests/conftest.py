"""Shared fixtures: tiny generated data and the real-data folder (helpers live in tests/helpers/)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, torch.get_num_threads()))
# data and caches of the tests stay out of the user's FUSION_HOME
os.environ.setdefault("FUSION_HOME", tempfile.mkdtemp(prefix="fusion-tests-"))


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory) -> Path:
    """A tiny built-in digits set (manifest.csv + files), generated once per test session."""
    from fusion.data.builtin_digits import ensure_builtin_digits

    return ensure_builtin_digits(tmp_path_factory.mktemp("digits") / "digits", n_train=48, n_val=16, n_test=16)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/data (or $FUSION_REALDATA); skips the test when absent."""
    path = Path(os.environ.get("FUSION_REALDATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found (set FUSION_REALDATA)")
    return path
