"""Dual-stream LSTM-CRF audio-video synchronisation model.

A video stream (mouth crops -> CNN -> BiLSTM) and an audio stream (log-mel at the video frame rate -> BiLSTM)
give per-frame embeddings v_t and a_t. For each candidate offset k in [-K, K] the emission of video frame t is
the scaled cosine similarity of v_t with a_{t+k} (SyncNet-style matching, Chung & Zisserman 2016); candidates
whose audio frame falls outside the sequence get a learned "unknown" score. A linear-chain CRF over the 2K+1
offset states, whose transitions only allow moves of at most ``max_jump`` frames per frame, decodes a per-frame
offset path, so constant offsets and slow drift are both tracked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusion.encoders.video import VideoEncoder
from fusion.temporal.crf import LinearChainCRF, band_transitions


class AudioFrameEncoder(nn.Module):
    """Log-mel frames at the video rate (B, T, S*F) -> per-frame tokens (B, T, D) through a BiLSTM."""

    def __init__(self, in_dim: int, hidden_dim: int = 64, out_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(in_dim, 2 * hidden_dim), nn.ReLU(inplace=True))
        self.lstm = nn.LSTM(2 * hidden_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_dim, out_dim))
        self.out_dim = out_dim

    def forward_tokens(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # Per-clip mean/variance normalisation of each feature over the valid frames.
        w = torch.ones(audio.shape[:2], device=audio.device) if mask is None else mask.float()
        w = w[:, :, None]  # (B, T, 1)
        count = w.sum(1, keepdim=True).clamp_min(1.0)
        mean = (audio * w).sum(1, keepdim=True) / count  # (B, 1, S*F)
        std = ((audio - mean).pow(2) * w).sum(1, keepdim=True).div(count).sqrt()
        x = (audio - mean) / (std + 1e-3) * w  # (B, T, S*F)
        hidden, _ = self.lstm(self.inp(x))  # (B, T, 2H)
        return self.proj(hidden)  # (B, T, D)


class SyncModel(nn.Module):
    """Per-frame audio-video offset estimation (see the module docstring).

    Args:
        max_offset: K; offsets -K..K frames are the CRF states (state k + K).
        subframes: audio feature steps per video frame S.
        n_mels: mel bands F.
        crop_size: mouth crop side.
        hidden_dim: LSTM hidden size per direction (both streams).
        embed_dim: size of the matched embeddings.
        max_jump: largest allowed change of the offset between consecutive frames.
        frame_loss_weight: weight of the per-frame cross-entropy on the emissions (beside the CRF NLL).
        dropout: dropout before the embedding projections.
    """

    def __init__(self, max_offset: int = 15, subframes: int = 4, n_mels: int = 40, crop_size: int = 32,
                 hidden_dim: int = 64, embed_dim: int = 64, max_jump: int = 1, frame_loss_weight: float = 1.0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.max_offset = max_offset
        self.num_states = 2 * max_offset + 1
        self.frame_loss_weight = frame_loss_weight
        self.video = VideoEncoder(crop_size=crop_size, hidden_dim=hidden_dim, out_dim=embed_dim, dropout=dropout)
        self.audio = AudioFrameEncoder(subframes * n_mels, hidden_dim, embed_dim, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.unknown_score = nn.Parameter(torch.zeros(()))
        self.crf = LinearChainCRF(self.num_states, band_transitions(self.num_states, max_jump))

    def emissions(self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Offset scores per frame.

        Args:
            video: (B, T, h, w) mouth crops.
            audio: (B, T, S*F) audio features of the same frames (already shifted).
            mask: (B, T) bool of valid frames.

        Returns:
            (B, T, 2K+1) emission scores, state k + K = offset k.
        """
        batch, steps = video.shape[:2]
        if mask is None:
            mask = torch.ones(batch, steps, dtype=torch.bool, device=video.device)
        v = F.normalize(self.video.forward_tokens(video, mask), dim=-1)  # (B, T, D)
        a = F.normalize(self.audio.forward_tokens(audio, mask), dim=-1)  # (B, T, D)
        k = self.max_offset
        a_pad = F.pad(a, (0, 0, k, k))  # (B, T+2K, D)
        windows = a_pad.unfold(1, self.num_states, 1)  # (B, T, D, 2K+1): windows[b, t, :, j] = a[b, t + j - K]
        sim = torch.einsum("btd,btdj->btj", v, windows)  # (B, T, 2K+1)
        target = torch.arange(steps, device=video.device)[:, None] + torch.arange(-k, k + 1, device=video.device)
        lengths = mask.sum(1)  # (B,)
        inside = (target[None] >= 0) & (target[None] < lengths[:, None, None])  # (B, T, 2K+1)
        scores = sim * self.logit_scale.exp().clamp(max=100.0)
        return torch.where(inside, scores, self.unknown_score.expand_as(scores))

    def loss(self, video: torch.Tensor, audio: torch.Tensor, states: torch.Tensor,
             mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """CRF negative log-likelihood per frame plus the weighted per-frame cross-entropy.

        Args:
            states: (B, T) true offset states (offset + K).

        Returns:
            {"loss", "crf_loss", "frame_loss", "emissions"}.
        """
        if mask is None:
            mask = torch.ones(states.shape, dtype=torch.bool, device=states.device)
        emissions = self.emissions(video, audio, mask)  # (B, T, 2K+1)
        crf_loss = self.crf(emissions, states, mask, reduction="token_mean")
        frame_loss = F.cross_entropy(emissions[mask], states[mask])
        loss = crf_loss + self.frame_loss_weight * frame_loss
        return {"loss": loss, "crf_loss": crf_loss, "frame_loss": frame_loss, "emissions": emissions}

    @torch.no_grad()
    def decode(self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor | None = None,
               emissions: torch.Tensor | None = None) -> torch.Tensor:
        """Viterbi offset path in frames (audio late > 0): (B, T) float, NaN at padded frames."""
        if emissions is None:
            emissions = self.emissions(video, audio, mask)
        paths, _ = self.crf.decode(emissions, mask)  # (B, T), -1 at padding
        offsets = (paths - self.max_offset).float()
        return offsets.masked_fill(paths < 0, float("nan"))

    def posterior_offsets(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame expected offset under the CRF posterior (fractional frames), NaN at padded frames.

        The marginals are the gradient of log Z with respect to the emissions. Unlike the integer Viterbi path
        this follows a drifting offset between whole frames.

        Args:
            emissions: (B, T, 2K+1) from :meth:`emissions`.

        Returns:
            (B, T) float offsets in frames.
        """
        if mask is None:
            mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        with torch.enable_grad():
            scores = emissions.detach().float().requires_grad_(True)
            (marginals,) = torch.autograd.grad(self.crf.log_partition(scores, mask).sum(), scores)  # (B, T, 2K+1)
        states = torch.arange(-self.max_offset, self.max_offset + 1, device=emissions.device, dtype=marginals.dtype)
        expected = (marginals * states).sum(-1) / marginals.sum(-1).clamp_min(1e-9)  # (B, T)
        return expected.masked_fill(~mask.bool(), float("nan"))
