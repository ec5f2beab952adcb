"""Text tokenizers: a built-in byte-level tokenizer (no download) or a local transformers tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from fusion.errors import MissingFileError


class ByteTokenizer:
    """UTF-8 byte tokenizer with [PAD]=0, [CLS]=1, [SEP]=2; byte b maps to id b + 3."""

    pad_id, cls_id, sep_id = 0, 1, 2
    vocab_size = 256 + 3

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [self.cls_id] + [b + 3 for b in text.encode("utf-8")][: max_length - 2] + [self.sep_id]
            ids[i, : len(tokens)] = torch.tensor(tokens)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}


class PretrainedTokenizer:
    """Wraps a transformers tokenizer: a local folder, or a hub id from the Hugging Face cache (`options`, e.g.
    local_files_only, go to from_pretrained; remote code stays off)."""

    def __init__(self, path: str, **options):
        from transformers import AutoTokenizer

        local = Path(path).expanduser().is_dir()
        if not local and (not options or path.startswith(("/", ".", "~"))):
            raise MissingFileError(f"data.text_model: '{path}' is not a local directory with a tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **({"local_files_only": True} | options))
        except (OSError, ValueError) as err:
            raise MissingFileError(f"tokenizer '{path}': not found ({type(err).__name__}: {err})") from None
        self.vocab_size = len(self.tokenizer)

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": out["input_ids"].long(), "attention_mask": out["attention_mask"].long()}


def build_tokenizer(text_model: str | None, **options) -> ByteTokenizer | PretrainedTokenizer:
    """The built-in byte tokenizer when `text_model` is None, else the transformers tokenizer it names (a local
    directory; a hub id too when `options` has local_files_only=False)."""
    return ByteTokenizer() if text_model is None else PretrainedTokenizer(text_model, **options)
