import pytest
import torch
from eval_toy import toy_batches, trained_toy
from torch import nn

from fusion.eval.accuracy import classification_metrics, predict
from fusion.eval.cost import count_flops, count_parameters, peak_memory_bytes


def test_flops_of_a_linear_stack_are_two_multiply_adds_per_weight_and_sample():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(5, 16)
    assert count_flops(lambda: model(x)) == 2 * 5 * (16 * 32 + 32 * 4)
    assert count_parameters(model) == 16 * 32 + 32 + 32 * 4 + 4


def test_cpu_peak_memory_counts_the_largest_set_of_live_intermediates():
    x = torch.randn(64, 256)

    def run() -> torch.Tensor:
        a = x * 2  # 64 KiB live
        b = a + 1  # 128 KiB live
        del a  # 64 KiB
        c = b.sum()  # + 4 bytes
        return c

    peak, method = peak_memory_bytes(run, "cpu", resident_bytes=1000)
    assert peak == 1000 + 2 * 64 * 256 * 4
    assert "dispatch" in method


def test_macro_f1_matches_hand_computation():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 2, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 1, fp 0, fn 1 -> 2/3
    metrics = classification_metrics(predictions, labels, num_classes=4)  # class 3 absent: not averaged
    assert metrics["acc"] == pytest.approx(4 / 6)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    with pytest.raises(ValueError):
        classification_metrics(predictions[:2], labels, 4)


def test_predict_matches_a_direct_forward():
    model, batches = trained_toy(), toy_batches()
    predictions, labels = predict(model, batches, "cpu")
    with torch.no_grad():
        direct = torch.cat([model(b).argmax(-1) for b in batches])
    assert torch.equal(predictions, direct) and torch.equal(labels, torch.cat([b["label"] for b in batches]))
    assert classification_metrics(predictions, labels, 3)["acc"] > 0.8  # the toy task is learnable
