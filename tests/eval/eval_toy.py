"""A small two-modality classifier in the project's batch format, honouring the modality mask."""

import torch
from torch import nn


class ToyLateFusion(nn.Module):
    """Averages per-modality logits over the modalities marked present."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.audio = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, batch: dict) -> torch.Tensor:
        logits = torch.stack([self.image(batch["image"]), self.audio(batch["audio"])], dim=1)  # (B, 2, C)
        present = torch.stack([batch["mask"]["image"], batch["mask"]["audio"]], dim=1).float()  # (B, 2)
        return (logits * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp(min=1)  # (B, C)


def toy_batches(num_batches: int = 3, batch_size: int = 8, seed: int = 0) -> list[dict]:
    """Batches whose label is readable from both modalities (class means differ), some audio missing."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        label = torch.randint(0, 3, (batch_size,), generator=generator)
        image = torch.randn(batch_size, 1, 4, 4, generator=generator) + label[:, None, None, None].float()
        audio = torch.randn(batch_size, 20, generator=generator) - label[:, None].float()
        audio_present = torch.rand(batch_size, generator=generator) > 0.2
        batches.append({
            "image": image, "audio": audio * audio_present[:, None],
            "mask": {"image": torch.ones(batch_size, dtype=torch.bool), "audio": audio_present},
            "label": label,
        })
    return batches


def trained_toy(seed: int = 0) -> ToyLateFusion:
    """The toy model after a few hundred full-batch steps (well above chance)."""
    torch.manual_seed(seed)
    model = ToyLateFusion()
    batches = toy_batches(4, 32, seed=seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        for batch in batches:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch), batch["label"]).backward()
            optimizer.step()
    return model.eval()
