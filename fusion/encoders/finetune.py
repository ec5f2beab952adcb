"""Fine-tuning controls for pretrained towers: their blocks, freezing all but the last N, gradient checkpointing
of blocks, and per-parameter learning-rate scales (a lower rate for pretrained weights, layer-wise decay).

Layer-wise decay as in BEiT / ELECTRA fine-tuning: block i of n learns at `lr_scale * decay ** (n - i)`, the
embeddings below the first block at `decay ** (n + 1)`, what follows the last block at `lr_scale`.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a network: the children holding parameters of its largest ModuleList/Sequential
    with at least two such children (ViT/BERT/wav2vec2 layers, timm stages, a torchvision trunk's stages)."""
    best, best_size = [], 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        children = [child for child in module.children() if _param_count(child)]
        size = _param_count(module)
        if len(children) >= 2 and size > best_size:
            best, best_size = children, size
    return best


def set_trainable(backbone: nn.Module, blocks: list[nn.Module], freeze: bool, unfreeze_last: int) -> None:
    """freeze: every weight fixed; with unfreeze_last=N the last N blocks and everything registered after them
    (final norms, poolers) train again."""
    if not freeze:
        return
    backbone.requires_grad_(False)
    if unfreeze_last <= 0:
        return
    trainable = blocks[-unfreeze_last:]
    for block in trainable:
        block.requires_grad_(True)
    last_ids = {id(p) for p in blocks[-1].parameters()} if blocks else set()
    after = False
    for param in backbone.parameters():  # registration order: what comes after the last block
        if id(param) in last_ids:
            after = True
        elif after:
            param.requires_grad_(True)


def freeze_batch_statistics(backbone: nn.Module) -> None:
    """Puts every submodule whose own parameters are all frozen (e.g. BatchNorm) in eval mode, so frozen weights
    also keep their running statistics. Call after each `train()`."""
    for module in backbone.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()


def depth_scales(backbone: nn.Module, blocks: list[nn.Module], lr_scale: float, layer_decay: float) -> dict[str, float]:
    """Parameter name (relative to `backbone`) -> learning-rate multiplier."""
    depth_of = {}
    n = len(blocks)
    for i, block in enumerate(blocks):
        for param in block.parameters():
            depth_of[id(param)] = n - 1 - i  # last block: 0
    scales, seen_block = {}, False
    for name, param in backbone.named_parameters():
        if id(param) in depth_of:
            seen_block = True
            depth = depth_of[id(param)]
        else:
            depth = n if not seen_block and n else 0  # embeddings below the blocks / heads above them
        scales[name] = lr_scale * layer_decay ** depth
    return scales


def checkpoint_blocks(blocks: list[nn.Module]) -> None:
    """Recomputes each block's activations in the backward pass (for towers without their own switch).

    The block's forward is wrapped on the instance, so parameter names and checkpoints stay the same."""
    for block in blocks:
        if getattr(block, "_fusion_checkpointed", False):
            continue
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, _block=block, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        block.forward = forward
        block._fusion_checkpointed = True


def pretrained_lr_scales(root: nn.Module) -> dict[str, float]:
    """Parameter name (as in `root.named_parameters()`) -> learning-rate multiplier, from every submodule that
    has `lr_scales()` (the pretrained towers); empty when there is none."""
    scales = {}
    for prefix, module in root.named_modules():
        ask = getattr(module, "lr_scales", None)
        if callable(ask):
            for name, scale in ask().items():
                scales[f"{prefix}.{name}" if prefix else name] = scale
    return scales


def scaled_groups(named_params, scales: dict[str, float], lr: float, **group) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters, one per learning-rate multiplier (in order of first
    appearance, so the grouping is the same on resume); `group` adds settings to each (e.g. weight_decay)."""
    groups: dict[float, list] = {}
    for name, param in named_params:
        if param.requires_grad:
            groups.setdefault(float(scales.get(name, 1.0)), []).append(param)
    return [{"params": params, "lr": lr * scale, **group} for scale, params in groups.items()]
