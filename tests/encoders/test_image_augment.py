"""ImageAugment: the affine map moves pixels where it says, draws stay within their bounds, eval is untouched."""

import math

import pytest
import torch

from fusion.encoders.image import ImageAugment, ImageEncoder, affine
from fusion.errors import ConfigError


def dot(b: int = 1, side: int = 8, y: int = 3, x: int = 2) -> torch.Tensor:
    images = torch.zeros(b, 1, side, side)
    images[:, 0, y, x] = 1.0
    return images


def where(images: torch.Tensor) -> tuple[int, int]:
    flat = int(images[0, 0].argmax())
    return divmod(flat, images.shape[-1])


def test_identity_is_exact():
    images = torch.randn(3, 2, 8, 8)
    one, zero = torch.ones(3), torch.zeros(3)
    assert torch.allclose(affine(images, zero, one, zero, zero), images, atol=1e-5)


def test_shift_moves_pixels_right_and_down():
    shift = torch.tensor([0.25])  # a quarter of 8 px
    moved = affine(dot(), torch.zeros(1), torch.ones(1), shift, torch.zeros(1))
    assert where(moved) == (3, 4)
    assert moved.sum().item() == pytest.approx(1.0, abs=1e-5)
    moved = affine(dot(), torch.zeros(1), torch.ones(1), torch.zeros(1), -shift)
    assert where(moved) == (1, 2)


def test_quarter_turn_and_zoom_about_the_centre():
    turned = affine(dot(side=8, y=0, x=4), torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1), torch.zeros(1))
    assert where(turned) == (4, 7)  # top middle -> right middle (clockwise on screen)
    grown = affine(dot(side=8, y=3, x=3), torch.zeros(1), torch.full((1,), 3.0), torch.zeros(1), torch.zeros(1))
    assert where(grown) == (2, 2)  # 0.5 px from the centre -> 1.5 px
    assert grown[0, 0, 2, 2].item() == pytest.approx(1.0, abs=1e-5)


def test_random_draws_stay_in_bounds_and_differ_per_sample():
    torch.manual_seed(0)
    images = dot(b=64, side=32, y=16, x=16)
    out = ImageAugment(rotate=0.0, scale=0.0, shift=0.1)(images)
    centres = torch.tensor([where(o[None]) for o in out], dtype=torch.float32)  # (64, 2)
    assert (centres - 16).abs().max() <= 0.1 * 32 + 1
    assert len({tuple(c.tolist()) for c in centres}) > 10


def test_encoder_augments_only_in_training():
    torch.manual_seed(0)
    encoder = ImageEncoder(augment=True, augment_args={"shift": 0.2})
    images = torch.randn(4, 1, 32, 32)
    encoder.eval()
    assert torch.equal(encoder(images), encoder(images))
    encoder.train()
    assert not torch.allclose(encoder.feature_map(images), encoder.trunk(images))


def test_bad_settings_name_the_argument():
    with pytest.raises(ConfigError, match="augment_args"):
        ImageAugment(scale=1.5)
