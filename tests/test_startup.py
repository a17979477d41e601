"""Start-up: the CLI's help and `info` import nothing heavy; light name lists mirror their
registries; tokenizers loaded without AutoTokenizer equal AutoTokenizer's."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mice_index.checkpoints import load_tokenizer
from mice_index.choices import CANDIDATES, CODEC_NAMES, RERANKERS
from mice_index.codec import codec_names
from mice_index.search import SearchConfig

from .test_search import built  # noqa: F401


def test_choices_mirror_the_registries():
    assert CODEC_NAMES == tuple(codec_names())
    from mice_index.candidates.dense import DenseKind
    from mice_index.choices import DENSE_KINDS, QUANTIZE
    from mice_index.scorer import ScorerConfig

    assert DENSE_KINDS == typing.get_args(DenseKind)
    assert QUANTIZE == typing.get_args(typing.get_type_hints(ScorerConfig)["quantize"])
    hints = typing.get_type_hints(SearchConfig)
    assert CANDIDATES == typing.get_args(hints["candidates"]) and RERANKERS == typing.get_args(hints["rerank"])


HEAVY = ("torch", "transformers", "faiss", "zarr", "pyarrow", "bm25s", "fastapi", "uvicorn", "ray", "pyterrier")


def test_cli_help_and_info_import_nothing_heavy(built):  # noqa: F811
    code = ("import sys\nfrom mice_index.cli import main\nsys.argv = ['mice-index'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    for args in (["--help"], ["info", "--index", str(built[0]), "--json"], ["serve", "--help"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                             cwd=os.getcwd())
        assert "HEAVY []" in out.stdout, (args, out.stdout[-500:], out.stderr[-500:])


@pytest.mark.parametrize("which", ["minilm", "tiny"])
def test_tokenizer_equals_autotokenizer(which, minilm_dir, tiny_bert_dir):
    from transformers import AutoTokenizer

    path = Path(minilm_dir if which == "minilm" else tiny_bert_dir)
    ours, auto = load_tokenizer(path), AutoTokenizer.from_pretrained(str(path), use_fast=True)
    # a BERT tokenizer.json is read without transformers (mice_index/tokenizer.py), to the same result
    assert type(ours).__name__ == "FastTokenizer" and ours.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str()
    texts = ["Héllo wörld, BEES make honey!", "naïve café 東京", "x " * 400, ""]
    a = ours(texts, truncation=True, max_length=64, return_offsets_mapping=True)
    b = auto(texts, truncation=True, max_length=64, return_offsets_mapping=True)
    assert a["input_ids"] == b["input_ids"] and a["offset_mapping"] == b["offset_mapping"]
    assert [a.word_ids(i) for i in range(4)] == [b.word_ids(i) for i in range(4)]
    a = ours(texts, padding=True, truncation=True, max_length=32, return_tensors="pt", return_token_type_ids=False)
    b = auto(texts, padding=True, truncation=True, max_length=32, return_tensors="pt", return_token_type_ids=False)
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype and a[k].tolist() == b[k].tolist() for k in a)
    assert ours("bees") == dict(auto("bees")) and ours.get_vocab() == auto.get_vocab()
    assert ours.all_special_ids == auto.all_special_ids and ours.pad_token_id == auto.pad_token_id


def test_tokenizer_of_another_class_goes_through_autotokenizer(tmp_path, minilm_dir):
    import json
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(minilm_dir) / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    tok = load_tokenizer(tmp_path)
    assert tok("bees")["input_ids"] == load_tokenizer(Path(minilm_dir))("bees")["input_ids"]
