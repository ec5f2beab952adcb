"""Text encoder: a small built-in transformer over byte tokens, or a local transformers model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fusion.encoders.preprocessing import TextPreprocessing
from fusion.errors import MissingFileError


def masked_mean(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens: (B, T, D), (B, T) -> (B, D)."""
    weights = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Token ids -> pooled features (B, out_dim) and tokens (B, T, out_dim).

    Args:
        pretrained_path: local transformers model directory (e.g. a sentence-transformer); None = built-in model.
        vocab_size: vocabulary of the built-in model (the byte tokenizer has 259).
        out_dim: feature size.
        num_layers: transformer layers of the built-in model.
        num_heads: attention heads of the built-in model.
        max_length: longest token sequence of the built-in model.
        freeze: keep a pretrained model's weights fixed.
    """

    def __init__(self, pretrained_path: str | None = None, vocab_size: int = 259, out_dim: int = 64,
                 num_layers: int = 2, num_heads: int = 4, max_length: int = 128, freeze: bool = False):
        super().__init__()
        self.pretrained = pretrained_path is not None
        if self.pretrained:
            from transformers import AutoModel

            if not Path(pretrained_path).is_dir():
                raise MissingFileError(f"encoders.text.pretrained_path: '{pretrained_path}' is not a local model directory")
            self.backbone = AutoModel.from_pretrained(pretrained_path, local_files_only=True)
            if freeze:
                self.backbone.requires_grad_(False)
            self.proj = nn.Linear(self.backbone.config.hidden_size, out_dim)
        else:
            self.embed = nn.Embedding(vocab_size, out_dim, padding_idx=0)
            self.position = nn.Parameter(torch.zeros(1, max_length, out_dim))
            nn.init.normal_(self.position, std=0.02)
            layer = nn.TransformerEncoderLayer(out_dim, num_heads, dim_feedforward=2 * out_dim, dropout=0.1,
                                               batch_first=True, norm_first=True)
            self.backbone = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(out_dim)
        self.out_dim = out_dim

    @classmethod
    def preprocessing(cls, pretrained_path: str | None = None, **_options) -> TextPreprocessing:
        """The tokenizer saved with the pretrained model, else the built-in byte tokenizer."""
        return TextPreprocessing(tokenizer=pretrained_path, extra={"local_files_only": True} if pretrained_path else {})

    def forward_tokens(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, attention = text["input_ids"], text["attention_mask"]  # (B, T), (B, T)
        if self.pretrained:
            hidden = self.backbone(input_ids=ids, attention_mask=attention).last_hidden_state  # (B, T, H)
            return self.proj(hidden)  # (B, T, D)
        x = self.embed(ids) + self.position[:, : ids.shape[1]]  # (B, T, D)
        return self.norm(self.backbone(x, src_key_padding_mask=attention == 0))  # (B, T, D)

    def forward(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_mean(self.forward_tokens(text), text["attention_mask"])  # (B, D)
