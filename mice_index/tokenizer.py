"""A BERT-family tokenizer read straight from `tokenizer.json` with the `tokenizers` library.

`transformers` costs ~4 s to import and ~2 s to build a `BertTokenizerFast` on 2 cores, most of a
cold `mice-index search`; yet such a tokenizer is only a thin shell over the same `tokenizers`
object (its `backend_tokenizer`). `FastTokenizer` is that object with the part of the
`transformers` call signature mice-index uses: batched or single texts, `truncation`/`max_length`,
`padding=True` (longest), `return_tensors="pt"`, `return_offsets_mapping`, `word_ids(i)`,
`get_vocab`, the special-token ids and `save_pretrained`. Ids and offsets equal
`BertTokenizerFast`'s (tests/test_first_hour.py), and so does the model fingerprint, which hashes
`backend_tokenizer.to_str()`.

`load_fast_tokenizer(path)` returns None where this is not known to be exact, and the caller falls
back to `transformers`: no `tokenizer.json`, a `tokenizer_class` other than BERT's, or a
`tokenizer_config.json` whose lower-casing / accent / Chinese-character options differ from the
normalizer stored in `tokenizer.json` (`BertTokenizerFast` would rebuild the normalizer then).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

__all__ = ["FastTokenizer", "load_fast_tokenizer"]

BERT_CLASSES = ("BertTokenizer", "BertTokenizerFast")
FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")  # copied by save_pretrained
# transformers' order of special-token attributes (all_special_ids follows it)
SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
BERT_DEFAULTS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                 "mask_token": "[MASK]"}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _token(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _normalizer_matches(spec: dict, config: dict) -> bool:
    """True when BertTokenizerFast would keep tokenizer.json's normalizer as it is."""
    norm = spec.get("normalizer") or {}
    if norm.get("type") != "BertNormalizer":
        return False
    wanted = {"lowercase": config.get("do_lower_case", True), "strip_accents": config.get("strip_accents"),
              "handle_chinese_chars": config.get("tokenize_chinese_chars", True)}
    return all(norm.get(k, wanted[k]) == v for k, v in wanted.items())


class Encoding(dict):
    """The result of a call: `input_ids`, `attention_mask` (and `token_type_ids`,
    `offset_mapping` when asked), lists or torch tensors; `word_ids(i)` as in transformers."""

    def __init__(self, data: dict, encodings: list):
        super().__init__(data)
        self.encodings = encodings

    def word_ids(self, i: int = 0) -> list[int | None]:
        return self.encodings[i].word_ids


class FastTokenizer:
    """`tokenizers.Tokenizer` with the transformers-style calls mice-index makes (module docstring).
    Thread-safe: truncation and padding are set per call under a lock."""

    def __init__(self, backend, config: dict, source: Path | None = None):
        self.backend_tokenizer = backend
        self.source = source
        self.model_max_length = int(config.get("model_max_length") or 512)
        if self.model_max_length > 1_000_000:  # transformers' "very large" sentinel: no limit known
            self.model_max_length = 512
        self._lock = threading.Lock()
        vocab = backend.get_vocab(with_added_tokens=True)
        self.special_tokens = {}
        for name in SPECIAL:
            tok = _token(config.get(name)) or BERT_DEFAULTS.get(name)
            if tok is not None and tok in vocab:
                self.special_tokens[name] = tok
        for name in SPECIAL:
            setattr(self, name, self.special_tokens.get(name))
            setattr(self, name + "_id", vocab.get(self.special_tokens[name]) if name in self.special_tokens else None)

    def __getstate__(self) -> dict:  # copy.deepcopy / pickle (Ray workers): the lock is per object
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str | Path) -> FastTokenizer:
        fast = load_fast_tokenizer(Path(path))
        if fast is None:
            raise ValueError(f"{path}: not a BERT tokenizer.json that FastTokenizer reads exactly")
        return fast

    @property
    def all_special_ids(self) -> list[int]:
        seen: list[int] = []
        for name in SPECIAL:
            i = getattr(self, name + "_id")
            if i is not None and i not in seen:
                seen.append(i)
        return seen

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.backend_tokenizer.token_to_id(tokens)
        return [self.backend_tokenizer.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]

    def __call__(self, text, *, padding: bool | str = False, truncation: bool | str = False,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 return_offsets_mapping: bool = False, add_special_tokens: bool = True) -> Encoding:
        """`text` (a str or a list of str) -> Encoding; token ids [B][T] ([CLS] ... [SEP]),
        truncated to `max_length` (default model_max_length) with `truncation`, padded to the
        longest with `padding`; `return_tensors="pt"`: int64 tensors [B, T] (needs padding)."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if padding not in (False, True, "longest", "do_not_pad"):
            raise ValueError(f"padding={padding!r} is not supported (True/'longest' or False)")
        if truncation not in (False, True, "longest_first", "do_not_truncate"):
            raise ValueError(f"truncation={truncation!r} is not supported (True/'longest_first' or False)")
        pad = padding in (True, "longest")
        cut = truncation in (True, "longest_first")
        tok = self.backend_tokenizer
        with self._lock:
            if cut:
                tok.enable_truncation(max_length or self.model_max_length)
            else:
                tok.no_truncation()
            if pad:
                tok.enable_padding(pad_id=self.pad_token_id or 0, pad_token=self.pad_token or "[PAD]")
            else:
                tok.no_padding()
            encs = tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        data: dict = {"input_ids": [e.ids for e in encs]}
        if return_token_type_ids is not False:
            data["token_type_ids"] = [e.type_ids for e in encs]
        if return_attention_mask is not False:
            data["attention_mask"] = [e.attention_mask for e in encs]
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in encs]
        if return_tensors == "pt":
            import torch

            data = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
        elif return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported (None or 'pt')")
        elif single:
            data = {k: v[0] for k, v in data.items()}
        return Encoding(data, encs)

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer.json (with no truncation or padding recorded) and copy the source's
        tokenizer_config.json, special_tokens_map.json and vocab.txt where present."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        spec = json.loads(self.backend_tokenizer.to_str())
        spec["truncation"], spec["padding"] = None, None
        (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2))
        if self.source is not None:
            for name in FILES:
                src = self.source / name
                if src.is_file() and src.resolve() != (path / name).resolve():
                    shutil.copyfile(src, path / name)


def load_fast_tokenizer(path: Path) -> FastTokenizer | None:
    """The FastTokenizer of a model folder, or None when it would not equal BertTokenizerFast's
    (module docstring); the caller then loads the tokenizer with transformers."""
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    config = _read(path / "tokenizer_config.json")
    if config.get("tokenizer_class") not in BERT_CLASSES:
        return None
    config = {**_read(path / "special_tokens_map.json"), **config}
    try:
        spec = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not _normalizer_matches(spec, config) or (spec.get("model") or {}).get("type") != "WordPiece":
        return None
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(file))
    except Exception:  # noqa: BLE001 - let transformers try (and report) it
        return None
    return FastTokenizer(backend, config, path)
