"""The MICE authors' exports: loading (both families, their layer options), scores equal to an
oracle transcribed from their reference code (tests/authors_export.py), stored-state scoring,
the pipeline through the CLI, and refusals of what cannot be run exactly."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mice_index.cli import app
from mice_index.errors import ModelError
from mice_index.model import MiceModel, pad_states
from mice_index.scorer.fast import score_pairs
from tests import authors_export as ref

QUERIES = ["how do volcanoes erupt", "solar panel efficiency in winter"]
DOCS = ["Volcanoes erupt when magma rises through the crust and pressure builds up.",
        "Solar panels convert sunlight into electricity; cold weather can raise their efficiency.",
        "Bread is baked from flour, water, salt and yeast.",
        "Magma"]
# the "done when" options: cross-attention first, the [CLS] reads the document, separate
# bottoms with a deeper document side; then the reference's other forms
OPTIONS = {
    "done-when": dict(n_contextualization_layers=2, n_docs_ctx_layers=3, bound_bottom_layers=False,
                      cross_attn_first=True, mask_cls_to_doc=False, n_interaction_layers=2),
    "self-first-masked-cls": dict(n_contextualization_layers=2, cross_attn_first=False, mask_cls_to_doc=True,
                                  mask_query_to_cls=False),
    "cross-first-masked-cls": dict(n_contextualization_layers=3, cross_attn_first=True, mask_cls_to_doc=True),
    "self-first-cls-reads": dict(n_contextualization_layers=1, cross_attn_first=False, mask_cls_to_doc=False,
                                 n_interaction_layers=3),
}


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def _export(tmp_path, tokenizer, family, name, seed=0):
    oracle = ref.build(family, seed=seed, **OPTIONS[name])
    return oracle, ref.write_export(oracle, tmp_path / f"{family}-{name}", tokenizer)


def _oracle_scores(oracle, tokenizer, query, docs):
    """Each pair alone (no padding: the reference's masked [CLS] would average padding too)."""
    out = []
    for d in docs:
        q = tokenizer([query], truncation=True, max_length=16, return_tensors="pt")
        t = tokenizer([d], truncation=True, max_length=64, return_tensors="pt")
        out.append(oracle(q["input_ids"], q["attention_mask"], t["input_ids"], t["attention_mask"]).item())
    return torch.tensor(out)


@pytest.mark.parametrize("family", ["bert", "modernbert"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_scores_equal_reference_oracle(tmp_path, tokenizer, family, name):
    oracle, path = _export(tmp_path, tokenizer, family, name)
    model = MiceModel.from_pretrained(path)
    o = OPTIONS[name]
    cfg = model.config
    assert cfg.family == family and cfg.fusion_layer == o["n_contextualization_layers"]
    assert cfg.cross_attn_first == o["cross_attn_first"] and cfg.mask_query_to_cls == o.get("mask_query_to_cls", True)
    assert cfg.cls_cross_attention == ("mean" if o["mask_cls_to_doc"] else "attend")
    assert cfg.doc_layers == (o.get("n_docs_ctx_layers") or o["n_contextualization_layers"])
    for query in QUERIES:
        want = _oracle_scores(oracle, tokenizer, query, DOCS)
        assert want.std() > 1e-3  # the documents matter: the comparison can fail
        stored = model.encode_documents(DOCS)  # a padded batch: scores must not depend on it
        got = model.score(query, stored)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got, want)
        assert torch.allclose(model.score_texts(query, DOCS), got, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_inference_path_equals_model(tmp_path, tokenizer, family):
    _, path = _export(tmp_path, tokenizer, family, "done-when")
    model = MiceModel.from_pretrained(path)
    q, q_mask = model.encode_queries(QUERIES)
    docs, d_mask = pad_states(model.encode_documents(DOCS * 2))
    pair_query = torch.tensor([0] * 4 + [1] * 4)
    with torch.inference_mode():
        fast = score_pairs(model.interaction, q, q_mask, pair_query, docs, d_mask)
        want = torch.cat([model.score(QUERIES[0], model.encode_documents(DOCS)),
                          model.score(QUERIES[1], model.encode_documents(DOCS))])
    assert torch.allclose(fast, want, atol=1e-5)
    docs[1, 2, 0] = float("nan")  # a damaged stored state gives NaN (the scorer names the shard)
    with torch.inference_mode():
        assert torch.isnan(score_pairs(model.interaction, q, q_mask, pair_query, docs, d_mask)[1])


def test_modernbert_bottom_equals_transformers_hidden_states(tmp_path, tokenizer):
    from transformers import ModernBertModel

    from mice_index.authors import modernbert_config

    hf_cfg = ref.tiny_config("modernbert")
    torch.manual_seed(3)
    hf = ModernBertModel(hf_cfg).eval()
    raw = json.loads(hf_cfg.to_json_string())
    texts = ["a short one", " ".join(["long document text"] * 12)]  # > local window: sliding matters
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states
    for local, fusion in ((True, 2), (True, 3), (False, 2)):
        cfg = modernbert_config(raw, dict(fusion_layer=fusion, num_interaction_layers=1, max_query_length=16,
                                          max_doc_length=64), local_attention=local)
        model = MiceModel(cfg)
        own = {k: v for k, v in hf.state_dict().items() if not k.startswith("final_norm")}
        model.bottom.load_state_dict({k.replace("layers.", "layers.", 1): v for k, v in own.items()
                                      if k.startswith("embeddings.") or int(k.split(".")[1]) < fusion}, strict=False)
        with torch.no_grad():
            states = model.bottom(enc["input_ids"], enc["attention_mask"])
        valid = enc["attention_mask"].bool()
        diff = (states - hidden[fusion]).abs()[valid].max().item()
        if local:
            assert diff < 1e-5, diff
        else:  # full attention (the reference code's bottom) differs past the window
            assert diff > 1e-4 and (states - hidden[fusion]).abs()[0][valid[0]].max().item() < 1e-5


def test_pipeline_build_search_eval(tmp_path, tokenizer):
    from mice_index.sources import sample_collection

    _, path = _export(tmp_path, tokenizer, "bert", "done-when", seed=4)
    idx, run = tmp_path / "idx", tmp_path / "run.trec"
    r = CliRunner().invoke(app, ["build", "--corpus", str(sample_collection()), "--index", str(idx), "--model",
                                 str(path), "--codec", "fp32", "--dense", "none", "--dtype", "fp32", "--quiet"])
    assert r.exit_code == 0, r.output
    info = json.loads(CliRunner().invoke(app, ["info", "--index", str(idx), "--json"]).stdout)
    assert info["model_fingerprint"] == MiceModel.from_pretrained(path).fingerprint()
    assert info["layer"] == 3 and info["model_family"] == "bert"  # the document side's depth
    assert info["model_options"] == {"cross_attn_first": True, "cls_cross_attention": "attend",
                                     "shared_bottom": False, "doc_fusion_layer": 3}
    table = CliRunner().invoke(app, ["info", "--index", str(idx)]).stdout
    assert "bert" in table and "cross_attn_first=True" in table
    r = CliRunner().invoke(app, ["search", "--index", str(idx), "--queries", str(sample_collection()), "--run",
                                 str(run), "--k", "5", "--dtype", "fp32", "--quantize", "none", "--candidates", "bm25"])
    assert r.exit_code == 0, r.output
    lines = run.read_text().splitlines()
    assert lines and len(lines[0].split()) == 6
    r = CliRunner().invoke(app, ["eval", "--run", str(run), "--qrels", str(sample_collection()), "--json"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) >= {"nDCG@10"}
    r = CliRunner().invoke(app, ["search", "--index", str(idx), "--query", "why are there tides", "--json",
                                 "--dtype", "fp32", "--explain", "--candidates", "bm25"])
    assert r.exit_code == 0, r.output


def _corrupt(path, fn):
    from safetensors.torch import load_file, save_file

    f = path / "model" / "model.safetensors"
    w = load_file(str(f))
    fn(w)
    save_file(w, str(f))


@pytest.mark.parametrize("family", ["bert", "modernbert"])
@pytest.mark.parametrize("fault,match", [
    (lambda w: w.__setitem__("extra.weight", torch.zeros(2)), "unknown 1 \\['extra.weight'\\]"),
    (lambda w: w.pop("classifier.bias"), "missing 1 \\['classifier.bias'\\]"),
    (lambda w: w.__setitem__("classifier.weight", torch.zeros(1, 7)), "classifier.weight|interaction.head.weight"),
])
def test_bad_weights_refused(tmp_path, tokenizer, family, fault, match):
    _, path = _export(tmp_path, tokenizer, family, "done-when")
    _corrupt(path, fault)
    with pytest.raises(ModelError, match=match):
        MiceModel.from_pretrained(path)


@pytest.mark.parametrize("field,value,match", [
    ("extra_attn_bias", True, "extra_attn_bias = True is not supported"),
    ("global_cls_token", True, "global_cls_token = True is not supported"),
    ("compress_dim", 2.0, "compress_dim = 2.0 is not supported"),
    ("shiny_new_option", 1, "unknown MICE option"),
])
def test_unsupported_options_refused(tmp_path, tokenizer, field, value, match):
    _, path = _export(tmp_path, tokenizer, "bert", "done-when")
    d = json.loads((path / "experimaestro.json").read_text())
    d["objects"][1]["fields"][field] = value
    (path / "experimaestro.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match=match):
        MiceModel.from_pretrained(path)


def test_family_mismatch_and_overrides_refused(tmp_path, tokenizer):
    _, path = _export(tmp_path, tokenizer, "bert", "done-when")
    with pytest.raises(ModelError, match="cannot be overridden"):
        MiceModel.from_pretrained(path, fusion_layer=1)
    d = json.loads((path / "experimaestro.json").read_text())
    d["objects"][1]["type"] = "MICE.modeling.mice.ModernBertMiceCrossEncoder"
    (path / "experimaestro.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="backbone config is 'bert'"):
        MiceModel.from_pretrained(path)


def test_saved_copy_keeps_options_and_scores(tmp_path, tokenizer):
    _, path = _export(tmp_path, tokenizer, "modernbert", "done-when")
    model = MiceModel.from_pretrained(path)
    copy = MiceModel.from_pretrained(model.save(tmp_path / "ours"))
    assert copy.config == model.config and copy.fingerprint() == model.fingerprint()
    assert torch.equal(copy.score_texts(QUERIES[0], DOCS), model.score_texts(QUERIES[0], DOCS))


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_explain_attention_of_options_model(tmp_path, tokenizer, family):
    from mice_index.explain import cross_attention

    _, path = _export(tmp_path, tokenizer, family, "self-first-masked-cls")
    model = MiceModel.from_pretrained(path)
    q, q_mask = model.encode_queries([QUERIES[0]] * 2)
    docs, d_mask = pad_states(model.encode_documents(DOCS[:2]))
    probs = cross_attention(model.interaction, q, q_mask, docs, d_mask)
    sums = probs[:, 1:].sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    assert (probs * (d_mask[:, None, :] == 0)).abs().max() == 0  # no weight on padding


def test_modernbert_index_served(tmp_path, tokenizer):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mice_index.build import BuildConfig, build_index
    from mice_index.scorer import ScorerConfig
    from mice_index.search import SearchConfig, Searcher
    from mice_index.serve import BatchConfig, create_app
    from mice_index.sources import sample_collection

    _, path = _export(tmp_path, tokenizer, "modernbert", "cross-first-masked-cls", seed=5)
    build_index(sample_collection(), tmp_path / "idx", BuildConfig(model=str(path), codec="fp32", dtype="fp32",
                                                                  dense="none"))
    searcher = Searcher.open(tmp_path / "idx", config=SearchConfig(
        candidates="bm25", scorer=ScorerConfig(dtype="fp32", quantize="none")))
    assert searcher.model.config.family == "modernbert"
    want = [(h.doc_id, h.score) for h in searcher.search("how do honey bees make honey", k=5)]
    with TestClient(create_app(searcher, BatchConfig(window_ms=5), k=5)) as client:
        r = client.get("/search", params={"q": "how do honey bees make honey", "explain": True})
    assert r.status_code == 200, r.text
    hits = r.json()["results"][0]["hits"]
    assert [h["doc_id"] for h in hits] == [d for d, _ in want]
    assert all(abs(h["score"] - s) < 1e-5 for h, (_, s) in zip(hits, want))
    assert all("matches" in h for h in hits)


@pytest.mark.parametrize("cross_encoder", [True, False])
def test_modernbert_hf_checkpoint_initialises_mice(tmp_path, tokenizer, cross_encoder):
    from transformers import ModernBertForSequenceClassification, ModernBertModel

    hf_cfg = ref.tiny_config("modernbert")
    hf_cfg.num_labels = 1
    torch.manual_seed(7)
    hf = (ModernBertForSequenceClassification if cross_encoder else ModernBertModel)(hf_cfg).eval()
    hf.save_pretrained(str(tmp_path / "mb"), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp_path / "mb"))
    model = MiceModel.from_pretrained(tmp_path / "mb", fusion_layer=2, num_interaction_layers=3,
                                      max_doc_length=64, max_query_length=16)
    assert model.config.family == "modernbert" and model.config.local_attention
    body = hf.model if cross_encoder else hf
    texts = ["a short one", " ".join(["long document text"] * 12)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = body(enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states[2]
        states = model.bottom(enc["input_ids"], enc["attention_mask"])
    assert (states - hidden).abs()[enc["attention_mask"].bool()].max() < 1e-5
    layer, src = model.interaction.layers[1], body.layers[3].attn
    assert torch.equal(layer.attn.Wqkv.weight, src.Wqkv.weight)
    assert torch.equal(layer.crossattention.k_proj.weight, src.Wqkv.weight[32:64])  # seeded from self-attention
    assert torch.equal(layer.crossattention.Wo.weight, src.Wo.weight)
    if cross_encoder:
        assert torch.equal(model.interaction.head.weight, hf.classifier.weight)
    stored = model.encode_documents(DOCS)
    assert torch.allclose(model.score(QUERIES[0], stored), model.score_texts(QUERIES[0], DOCS), atol=1e-6)


def test_bound_bottom_with_deeper_documents_refused(tmp_path, tokenizer):
    _, path = _export(tmp_path, tokenizer, "bert", "done-when")
    d = json.loads((path / "experimaestro.json").read_text())
    del d["objects"][1]["fields"]["bound_bottom_layers"]  # back to its default, true
    (path / "experimaestro.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="n_docs_ctx_layers 3 differs .* bound_bottom_layers = true"):
        MiceModel.from_pretrained(path)
