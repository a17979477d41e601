"""A full cross-encoder over the same backbone: `[CLS] q [SEP] d [SEP]` through all layers.

The accuracy reference MICE approximates, the speed baseline in benchmarks, and a possible
teacher. Built on transformers' own BertForSequenceClassification (safetensors only).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mice_index.errors import ModelError
from mice_index.checkpoints import load_safetensors, resolve_model_path
from mice_index.text import bounded_texts

__all__ = ["CrossEncoder"]


class CrossEncoder:
    """Scores (query, document) pairs jointly. An encoder without a classifier gets a fresh head."""

    def __init__(self, name_or_path: str | Path, max_length: int = 512, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model_path(name_or_path)
        load_safetensors(path)  # refuses pickle-only checkpoints with a clear message
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=1, use_safetensors=True, dtype=dtype).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot load as a cross-encoder ({exc})") from exc
        self.max_length, self.device = max_length, torch.device(device)

    @torch.inference_mode()
    def score(self, query: str, documents: list[str], batch_size: int = 32) -> torch.Tensor:
        """One query against documents -> float32 scores [len(documents)]."""
        out = []
        for i in range(0, len(documents), batch_size):
            docs = bounded_texts(self.tokenizer, documents[i:i + batch_size], self.max_length)  # same kept tokens
            enc = self.tokenizer([query] * len(docs), docs, padding=True, truncation="only_second",
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            out.append(self.model(**enc).logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
