"""--explain: cross-attention probabilities are the layers' own, words map back to the stored text,
explaining never changes scores; snippets keep highlights on the right characters."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from mice_index.build import BuildConfig, build_index
from mice_index.explain import (STOPWORDS, Explainer, attention_probs, cross_attention, highlight_snippet,
                                hit_record)
from mice_index.model import key_padding_mask, query_self_mask
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher

from .test_search import _cli

DOCS = [  # written for these tests
    {"_id": "volcano", "title": "Volcanoes", "text": "The volcano erupted violently, covering the village in ash and lava."},
    {"_id": "bees", "title": "Bees", "text": "Honey bees collect nectar from flowers and turn it into honey inside the hive."},
    {"_id": "coral", "title": "Coral reefs", "text": "Warm water causes coral bleaching when the algae leave the reef."},
    {"_id": "glacier", "title": "", "text": "Glaciers   retreat as the\tclimate warms, and the ice melts each summer."},
    {"_id": "trains", "title": "Trains", "text": "High-speed trains run on dedicated tracks between large cities."},
    {"_id": "bread", "title": "Bread", "text": "Bakers knead the dough and let the yeast rise before baking bread."},
]
QUERIES = ["volcano ash lava", "honey nectar hive", "coral bleaching algae", "glaciers climate summer",
           "trains between cities", "yeast dough"]
FP32 = ScorerConfig(dtype="fp32", quantize="none")


@pytest.fixture(scope="module")
def default_index(tmp_path_factory):
    """The documents above indexed with the default model (its real bottom: all-MiniLM-L6-v2)."""
    root = tmp_path_factory.mktemp("explain")
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    build_index(root / "docs.jsonl", root / "idx", BuildConfig(codec="fp32", dtype="fp32"))
    return root / "idx"


@pytest.fixture(scope="module")
def searcher(default_index):
    return Searcher.open(default_index, config=SearchConfig(candidates="bm25", scorer=FP32))


def lexical(model):
    """A copy of `model` whose first interaction layer attends by plain dot products of states:
    query self-attention reduced to a LayerNorm, cross-attention queries/keys = 4·identity. With
    all-MiniLM-L6-v2's layer-3 states a query word then attends to its own occurrences."""
    m = copy.deepcopy(model)
    m.interaction.late = None  # explained by cross-attention (the paper head's view)
    layer = m.interaction.layers[0]
    with torch.no_grad():
        layer.self_attn.out.weight.zero_(), layer.self_attn.out.bias.zero_()
        layer.self_attn.norm.weight.fill_(1.0), layer.self_attn.norm.bias.zero_()
        eye = torch.eye(layer.cross_attn.query.weight.shape[0])
        layer.cross_attn.query.weight.copy_(4 * eye), layer.cross_attn.query.bias.zero_()
        layer.cross_attn.key.weight.copy_(eye), layer.cross_attn.key.bias.zero_()
    return m


def _random_states(B=3, Tq=7, Td=11, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, docs = torch.randn(B, Tq, D, generator=g), torch.randn(B, Td, D, generator=g)
    q_mask = torch.ones(B, Tq, dtype=torch.long)
    q_mask[1, 5:] = 0
    d_mask = torch.ones(B, Td, dtype=torch.long)
    d_mask[0, 6:], d_mask[2, 9:] = 0, 0
    return q, q_mask, docs, d_mask


def _randomise_biases(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.interaction.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_attention_probs_reproduce_the_sublayer(tiny_mice):
    _randomise_biases(tiny_mice)
    attn = tiny_mice.interaction.layers[0].cross_attn
    q, _, docs, d_mask = _random_states()
    mask = key_padding_mask(d_mask, q.dtype)
    with torch.no_grad():
        probs = attention_probs(attn, q, docs, mask)  # [B,H,Tq,Td]
        ctx = (probs @ attn._heads(attn.value(docs))).transpose(1, 2).reshape(q.shape)
        rebuilt = attn.norm(q + attn.out(ctx))
        torch.testing.assert_close(rebuilt, attn(q, docs, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert probs[0, :, :, 6:].abs().max() == 0 and probs[2, :, :, 9:].abs().max() == 0  # padding


def test_cross_attention_reads_the_layers_that_reach_the_score(tiny_mice):
    _randomise_biases(tiny_mice)
    q, q_mask, docs, d_mask = _random_states()
    base = cross_attention(tiny_mice.interaction, q, q_mask, docs, d_mask)
    assert base.shape == (3, 7, 11)
    torch.testing.assert_close(base[:, 1:].sum(-1), torch.ones(3, 6))
    # the first layer's attention is reproduced by hand
    layer = tiny_mice.interaction.layers[0]
    with torch.no_grad():
        x = layer.self_attn(q, q, query_self_mask(q_mask, q.dtype))
        want = attention_probs(layer.cross_attn, x, docs, key_padding_mask(d_mask, q.dtype)).mean(1)
    torch.testing.assert_close(base, want)
    # the last layer's cross-attention never reaches the score, so it is not shown either
    changed = copy.deepcopy(tiny_mice)
    with torch.no_grad():
        changed.interaction.layers[-1].cross_attn.key.weight.mul_(-3)
    torch.testing.assert_close(cross_attention(changed.interaction, q, q_mask, docs, d_mask), base)
    with torch.no_grad():
        changed.interaction.layers[0].cross_attn.key.weight.mul_(-3)
    assert not torch.allclose(cross_attention(changed.interaction, q, q_mask, docs, d_mask), base)


@pytest.mark.parametrize("query", QUERIES)
def test_a_query_word_in_the_document_is_among_its_top_matches(searcher, query):
    """With lexical attention, every query word that the hit contains is that word's top match and
    its spans point at its occurrences: token -> word -> character mapping is right (with the
    default model's own attention this holds for about half of the words: see README)."""
    hit = searcher.search(query, k=1)[0]
    ex = Explainer(lexical(searcher.model), searcher.reader, top=3).explain(query, [hit])[0]
    text = ex.text
    assert text == f"{hit.title} {hit.text}".strip()
    doc_words = {w.lower() for w in re.findall(r"\w+", text)}
    assert [m.query_word for m in ex.matches] == [w for w in query.split() if w not in STOPWORDS]
    checked = 0
    for m in ex.matches:
        assert 1 <= len(m.words) <= 3 and all(0 <= w.weight <= 1 for w in m.words)
        assert [w.weight for w in m.words] == sorted((w.weight for w in m.words), reverse=True)
        for w in m.words:
            assert all(text[a:b].lower() == w.word.lower() for a, b in w.spans)
        if m.query_word in doc_words:
            checked += 1
            assert m.words[0].word.lower() == m.query_word, (m.query_word, m.words)
            want = [(x.start(), x.end()) for x in re.finditer(rf"\b{m.query_word}\b", text, re.IGNORECASE)]
            assert m.words[0].spans == want
    assert checked >= 2


@pytest.mark.parametrize("query", QUERIES)
def test_default_model_maxsim_view_finds_the_query_words(searcher, query):
    """The shipped cls+maxsim model is explained by its MaxSim term, with no rebuilt weights: a
    query word that the hit contains is among that word's top-3 matches, spans included."""
    assert searcher.model.interaction.late is not None
    hit = searcher.search(query, k=1)[0]
    ex = Explainer(searcher.model, searcher.reader, top=3).explain(query, [hit])[0]
    doc_words = {w.lower() for w in re.findall(r"\w+", ex.text)}
    checked = 0
    for m in ex.matches:
        if m.query_word in doc_words:
            checked += 1
            assert m.query_word in [w.word.lower() for w in m.words], (m.query_word, m.words)
    assert checked >= 1


def test_maxsim_matches_are_the_scores_max(tiny_bert_dir):
    from mice_index.explain import maxsim_matches
    from mice_index.model import MiceModel

    model = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2, score_head="cls+maxsim")
    q, q_mask, docs, d_mask = _random_states()
    hits = maxsim_matches(model.interaction.late, q, q_mask, docs, d_mask, min_similarity=-1.0)
    assert hits.shape == (3, 7, 11) and torch.equal(hits.sum(-1), torch.ones(3, 7))
    with torch.inference_mode():
        qn, w = model.interaction.late.query(q, q_mask)
        sim = qn @ torch.nn.functional.normalize(docs, dim=-1).transpose(1, 2)
        picked = (sim * hits).sum(-1)  # the cosine at the chosen token is the row's max over inner tokens
    for b, n in enumerate(d_mask.sum(1).tolist()):
        torch.testing.assert_close(picked[b], sim[b, :, 1:n - 1].max(-1).values)
        assert not hits[b, :, 0].any() and not hits[b, :, n - 1:].any()  # never [CLS], [SEP] or padding
    # a best match below the threshold is no match: exactly the rows whose max cosine is below it
    cut = float(picked.median())
    above = maxsim_matches(model.interaction.late, q, q_mask, docs, d_mask, min_similarity=cut)
    assert torch.equal(above.sum(-1), (picked >= cut).float()) and torch.equal(above, hits * (picked >= cut)[..., None])


def test_explaining_does_not_change_scores(searcher):
    query = "honey nectar hive"
    before = searcher.search(query, k=4)
    Explainer(searcher.model, searcher.reader).explain(query, before)
    after = searcher.search(query, k=4)
    assert [(h.doc_id, h.score) for h in after] == [(h.doc_id, h.score) for h in before]


def test_stopword_only_query_still_explains(searcher):
    hit = searcher.search("volcano", k=1)[0]
    ex = Explainer(searcher.model, searcher.reader).explain("the of", [hit])[0]
    assert [m.query_word for m in ex.matches] == ["the", "of"]
    assert all(w.word.lower() not in STOPWORDS for m in ex.matches for w in m.words)


def test_highlight_snippet_keeps_marks_on_their_words():
    text = "Glaciers   retreat as the\tclimate warms,\n and the ice melts each summer."
    flat = " ".join(text.split())
    spans = [(text.index("climate"), text.index("climate") + 7), (text.index("summer"), text.index("summer") + 6)]
    snippet, marks = highlight_snippet(text, spans, width=200)
    assert snippet == flat and [snippet[a:b] for a, b in marks] == ["climate", "summer"]
    # a narrow window moves to the first mark, marks "…" on both cuts and clips marks to the window
    snippet, marks = highlight_snippet(text, spans[1:], width=20)
    assert len(snippet) <= 20 and snippet.startswith("…") and [snippet[a:b] for a, b in marks] == ["summer"]
    snippet, marks = highlight_snippet(text, spans[:1], width=16)
    assert snippet.endswith("…") and len(snippet) <= 16
    assert all(snippet[a:b] in "climate" for a, b in marks)
    # without marks: the text's beginning, as the plain snippet always was
    assert highlight_snippet(text, [], width=12) == (flat[:11] + "…", [])


def test_hit_record_with_and_without_explanation(searcher):
    hit = searcher.search("coral bleaching algae", k=1)[0]
    ex = Explainer(searcher.model, searcher.reader).explain("coral bleaching algae", [hit])[0]
    plain, explained = hit_record(hit), hit_record(hit, ex)
    assert set(plain) == {"rank", "doc_id", "score", "title", "snippet"}
    assert explained["score"] == plain["score"] and explained["doc_id"] == "coral"
    assert [m["query_word"] for m in explained["matches"]] == ["coral", "bleaching", "algae"]
    body = len(hit.title) + 1 if hit.title else 0  # the snippet is of the text; the title is its own field
    best = {(a, b) for m in ex.matches for w in m.words[:2] for a, b in w.spans if a >= body}
    assert {explained["snippet"][a:b] for a, b in explained["highlights"]} == {ex.text[a:b] for a, b in best}
    assert not plain["snippet"].startswith(hit.title) or not hit.title or hit.text.startswith(hit.title)
    json.dumps(explained)


def test_cli_explain_table_and_json(default_index, monkeypatch, capsys):
    code, out = _cli(monkeypatch, capsys, "search", "--index", default_index, "--query", "yeast dough",
                     "--k", 2, "--json", "--explain", "--dtype", "fp32")
    assert code in (0, None)
    explained = json.loads(out.out)
    code, out = _cli(monkeypatch, capsys, "search", "--index", default_index, "--query", "yeast dough",
                     "--k", 2, "--json", "--dtype", "fp32")
    plain = json.loads(out.out)
    assert [(h["doc_id"], h["score"]) for h in explained] == [(h["doc_id"], h["score"]) for h in plain]
    assert all("matches" in h and "matches" not in p for h, p in zip(explained, plain))
    code, out = _cli(monkeypatch, capsys, "search", "--index", default_index, "--query", "yeast dough",
                     "--k", 2, "--explain")
    assert code in (0, None) and "yeast →" in out.out and "dough →" in out.out


def test_cli_explain_needs_one_query(default_index, tmp_path, monkeypatch, capsys):
    (tmp_path / "q.tsv").write_text("1\tbread\n")
    code, out = _cli(monkeypatch, capsys, "search", "--index", default_index, "--queries", tmp_path / "q.tsv",
                     "--run", tmp_path / "r.run", "--explain")
    assert code == 2 and "--explain works with one --query" in out.err and not (tmp_path / "r.run").exists()
