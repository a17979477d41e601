"""Build-time document-token pruning (`--prune stopwords`) and int8 scoring (`quantize="int8"`):
exactly which states are stored, stored-state scores = text scores under the same rule, the rule
recorded and enforced on resume, bounded int8 error, bad values refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mice_index.build import BuildConfig, build_index
from mice_index.errors import MiceIndexError, SearchError
from mice_index.model import MiceModel
from mice_index.prune import TokenPruner
from mice_index.scorer import MiceScorer, ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import sample_collection
from mice_index.store import IndexReader, index_info

from .conftest import write_tiny_bert
from .test_user_faults_inputs import cli_one_line

FP32 = ScorerConfig(dtype="fp32", quantize="none")  # the exact path


def test_pruner_keeps_content_words_cls_sep_and_word_starts(minilm):
    tok = minilm.tokenizer
    pruner = TokenPruner(tok, "stopwords")
    ids = tok("The bees, and the wax of a hive: theirs is it!")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    kept = [t for t, k in zip(tokens, pruner.keep(ids)) if k]
    dropped = [t for t, k in zip(tokens, pruner.keep(ids)) if not k]
    assert kept[0] == "[CLS]" and kept[-1] == "[SEP]"
    assert {"bees", "wax", "hive"} <= set(kept)
    assert set(dropped) == {"the", ",", "and", "of", "a", ":", "is", "it", "!"}
    # a stopword-looking first piece of a longer word stays ("theirs" is not "their" + "##s" in every
    # vocabulary; build one that is)
    their, s = tok.convert_tokens_to_ids(["their", "##s"])
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert pruner.keep([cls, their, s, sep]).tolist() == [True, True, True, True]
    assert pruner.keep([cls, their, sep]).tolist() == [True, False, True]
    assert pruner.keep([cls, sep]).tolist() == [True, True]  # empty document
    assert TokenPruner(tok, "none").keep(ids).all()


def test_unknown_rule_is_one_line(minilm):
    with pytest.raises(MiceIndexError, match="--prune must be one of none, stopwords"):
        TokenPruner(minilm.tokenizer, "nouns")
    with pytest.raises(MiceIndexError, match="--prune must be one of"):
        BuildConfig(prune="all")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("prune")
    write_tiny_bert(root / "tiny", minilm_dir, seed=3)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=96, max_query_length=16, score_head="cls+maxsim")
    torch.manual_seed(0)
    with torch.no_grad():  # a random head and zero biases score every pair alike: spread the scores
        for name, p in model.interaction.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.3)
    model_dir = model.save(root / "mice")
    for rule in ("none", "stopwords"):
        build_index(sample_collection(), root / rule, BuildConfig(model=str(model_dir), codec="fp32", dtype="fp32",
                                                                  shard_docs=16, prune=rule))
    return root, MiceModel.load(model_dir)


def test_pruned_index_stores_exactly_the_kept_tokens(pruned):
    root, model = pruned
    full, cut = IndexReader.open(root / "none"), IndexReader.open(root / "stopwords")
    pruner = TokenPruner(model.tokenizer, "stopwords")
    rows = list(range(full.num_docs))
    texts = [model.format_document(t, x) for t, x in full.texts(rows)]
    ids, _ = model.tokenize(texts, 96)
    for row, states, kept, seq in zip(rows, full.get_states(rows), cut.get_states(rows), ids):
        seq = [i for i in seq.tolist() if i != 0]  # without padding
        keep = pruner.keep(seq)
        assert len(seq) == states.shape[0]
        assert 0 < keep.sum() < len(seq)  # every sample document has stopwords
        np.testing.assert_array_equal(kept, states[keep])  # the same states, rows dropped
    assert cut.manifest.settings.prune == "stopwords"
    assert full.manifest.settings.prune == "none"
    assert index_info(root / "stopwords")["prune"] == "stopwords" and index_info(root / "none")["prune"] == "none"
    assert cut.num_tokens < 0.9 * full.num_tokens


def test_pruned_index_scores_equal_text_scores(pruned):
    root, model = pruned
    searcher = Searcher.open(root / "stopwords", model=model,
                             config=SearchConfig(candidates="bm25", depth=8, alpha=0.0, scorer=FP32))
    hits = searcher.search("how do honey bees make honey", k=8)
    texts = [model.format_document(h.title, h.text) for h in hits]
    states = model.encode_documents(texts, prune="stopwords")
    want = model.score("how do honey bees make honey", states).numpy()
    np.testing.assert_allclose([h.score for h in hits], want, atol=1e-5)
    unpruned = model.score("how do honey bees make honey", model.encode_documents(texts)).numpy()
    assert np.abs(unpruned - want).max() > 1e-3  # pruning really changes what the model reads


def test_resume_with_another_rule_is_refused(pruned, tmp_path):
    root, model = pruned
    idx = tmp_path / "idx"
    cfg = BuildConfig(model=str(root / "mice"), codec="fp32", dtype="fp32", shard_docs=16, prune="stopwords")
    build_index(sample_collection(), idx, cfg)
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["complete"] = False  # as if killed before the candidate indexes
    (idx / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MiceIndexError, match="prune: index 'stopwords' vs now 'none'"):
        build_index(sample_collection(), idx, BuildConfig(**{**cfg.__dict__, "prune": "none"}))


def test_cli_bad_prune_and_quantize_are_one_line(tmp_path, monkeypatch, capsys):
    cli_one_line(monkeypatch, capsys, ["build", "--corpus", str(sample_collection()), "--index", str(tmp_path / "i"),
                                       "--prune", "verbs"], "--prune must be one of none, stopwords")
    assert not (tmp_path / "i").exists()
    cli_one_line(monkeypatch, capsys, ["search", "--index", str(tmp_path / "i"), "--query", "bees",
                                       "--quantize", "int4"], "--quantize must be one of auto, none, int8")
    cli_one_line(monkeypatch, capsys, ["search", "--index", str(tmp_path / "i"), "--query", "bees",
                                       "--dtype", "fp16"], "--dtype must be auto, fp32 or bf16, got 'fp16'")
    cli_one_line(monkeypatch, capsys, ["search", "--index", str(tmp_path / "i"), "--query", "bees",
                                       "--device", "tpu"], "--device must be auto, cpu or cuda, got 'tpu'")


def test_int8_scores_stay_close_and_keep_the_exact_path_exact(pruned):
    root, model = pruned
    reader = IndexReader.open(root / "none")
    rows = list(range(reader.num_docs))
    queries = ["honey bees", "coral reef bleaching in warm water"]
    exact = MiceScorer(model, reader, FP32).score(queries, [rows, rows])
    int8 = MiceScorer(model, reader, ScorerConfig(dtype="fp32", quantize="int8")).score(queries, [rows, rows])
    again = MiceScorer(model, reader, FP32).score(queries, [rows, rows])
    for e, q, a in zip(exact, int8, again):
        np.testing.assert_array_equal(e, a)  # quantizing made a copy: the shared model stays fp32
        spread = e.max() - e.min()
        # different kernels, bounded error (a random tiny model: the real effect on rankings is
        # measured on the dev collections, BENCHMARKS.md → Latency)
        assert 0 < np.abs(q - e).max() < 0.15 * spread
        assert np.corrcoef(q, e)[0, 1] > 0.98


@pytest.mark.parametrize("cfg", [dict(dtype="fp32", quantize="none"), dict(dtype="bf16"),
                                 dict(dtype="fp32", quantize="int8")])
def test_a_querys_scores_do_not_depend_on_the_other_queries(pruned, cfg):
    """Bit for bit, in every mode: batches never mix queries and each query goes through the
    bottom alone (bf16 rounding depends on a product's shape, int8 scales per batch, and padding
    to a longer query changes the bottom's float rounding)."""
    root, model = pruned
    reader = IndexReader.open(root / "none")
    scorer = MiceScorer(model, reader, ScorerConfig(batch_tokens=300, **cfg))
    rows = [list(range(0, 20)), list(range(10, 30)), [3, 1, 2]]
    queries = ["honey bees", "coral reef bleaching in warm water near the island", "stars"]
    together = scorer.score(queries, rows)
    for q, r, t in zip(queries, rows, together):
        np.testing.assert_array_equal(scorer.score([q], [r])[0], t)
    assert len(scorer._plan(np.repeat([0, 1, 2], [20, 20, 3]), np.concatenate(rows))) >= 3  # several batches
    searcher = Searcher.open(root / "none", model=model, config=SearchConfig(depth=12, scorer=ScorerConfig(**cfg)))
    batch = searcher.search_texts(queries, k=12)
    for q, hits in zip(queries, batch):
        alone = searcher.search(q, k=12)
        assert [(h.doc_id, h.score) for h in alone] == [(h.doc_id, h.score) for h in hits]


def test_bad_quantize_values(pruned):
    root, model = pruned
    with pytest.raises(SearchError, match="--quantize must be one of auto, none, int8"):
        ScorerConfig(quantize="int4")
    reader = IndexReader.open(root / "none")
    with pytest.raises(SearchError, match="--quantize int8 runs on CPU in fp32 only"):
        MiceScorer(model, reader, ScorerConfig(dtype="bf16", quantize="int8"))


def test_auto_dtype_is_bf16_where_the_cpu_has_bf16_dot_products():
    from mice_index.scorer import resolve_scorer_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_scorer_dtype("auto", cpu, bf16_cpu=True) == "bf16"
    assert resolve_scorer_dtype("auto", cpu, bf16_cpu=False) == "fp32"
    assert resolve_scorer_dtype("auto", cuda, bf16_cpu=False) == "bf16"
    assert resolve_scorer_dtype("fp32", cpu, bf16_cpu=True) == "fp32"


def test_auto_quantize_is_int8_only_on_cpu_fp32():
    from mice_index.scorer import resolve_quantize

    cpu, cuda, x86 = torch.device("cpu"), torch.device("cuda"), ["x86", "none"]
    assert resolve_quantize("auto", cpu, torch.float32, x86) == "int8"
    assert resolve_quantize("auto", cpu, torch.bfloat16, x86) == "none"
    assert resolve_quantize("auto", cuda, torch.float32, x86) == "none"
    assert resolve_quantize("none", cpu, torch.float32, x86) == "none"
    assert resolve_quantize("auto", cpu, torch.float32, ["qnnpack", "none"]) == "none"  # e.g. ARM


def test_explain_maps_a_pruned_index_back_to_words(pruned):
    from mice_index.explain import Explainer

    root, model = pruned
    searcher = Searcher.open(root / "stopwords", model=model, config=SearchConfig(candidates="bm25", depth=5,
                                                                                 scorer=FP32))
    hits = searcher.search("the honey bees of the hive", k=3)
    explanations = Explainer(model, searcher.reader).explain("the honey bees of the hive", hits)
    assert len(explanations) == 3
    # the stored states are a subset of the text's tokens: matches still land on the right words
    for e in explanations:
        for m in e.matches:
            for w in m.words:
                assert all(e.text[a:b].lower() == w.word.lower() for a, b in w.spans)
    matched = {w.word.lower() for e in explanations for m in e.matches for w in m.words}
    assert matched  # (a random tiny model: which words match is not lexical)


def test_a_bf16_scorer_leaves_the_shared_model_in_fp32(pruned):
    root, model = pruned
    reader = IndexReader.open(root / "none")
    rows = list(range(reader.num_docs))
    before = MiceScorer(model, reader, FP32).score(["honey bees"], [rows])[0]
    MiceScorer(model, reader, ScorerConfig(dtype="bf16")).score(["honey bees"], [rows])
    assert next(model.parameters()).dtype == torch.float32
    np.testing.assert_array_equal(MiceScorer(model, reader, FP32).score(["honey bees"], [rows])[0], before)
