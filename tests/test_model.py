"""The MICE model is faithful: bottom = BERT's hidden_states[ℓ*], masks do what the paper says,
scores do not depend on batching, stored states give the same scores as text, files round-trip."""

import json

import pytest
import torch

from mice_index.errors import ModelError
from mice_index.dense_tower import DenseTower
from mice_index.model import MiceModel, pad_states, query_self_mask

from .conftest import write_tiny_bert

SENTENCES = [
    "Bees.",
    "The volcano erupted for three weeks, covering nearby villages in fine grey ash.",
    "Sourdough bread rises slowly because wild yeast and lactic acid bacteria ferment the dough "
    "over many hours, which also gives the loaf its sour taste and open crumb.",
    "How do solar panels work on cloudy days?",
]


def test_bottom_matches_transformers_hidden_states(minilm, minilm_dir):
    """Real packaged all-MiniLM-L6-v2: layer-ℓ* states equal BertModel's hidden_states[ℓ*]."""
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(minilm_dir)).eval()
    ids, mask = minilm.tokenize(SENTENCES, 256)  # different lengths, padded in one batch
    assert len(set(mask.sum(1).tolist())) == len(SENTENCES)
    with torch.no_grad():
        ours = minilm.encode_document_batch(ids, mask)
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    ref = out.hidden_states[minilm.config.fusion_layer]
    real = mask.bool()
    assert (ours[real] - ref[real]).abs().max().item() < 1e-5
    # the dense tower continues from layer ℓ* and reproduces mean-pooled last layer
    tower = DenseTower.from_backbone(minilm_dir, minilm.config)
    with torch.no_grad():
        emb = tower(ours, mask)
    w = mask[..., None].float()
    ref_emb = torch.nn.functional.normalize((out.last_hidden_state * w).sum(1) / w.sum(1), dim=-1)
    assert (emb - ref_emb).abs().max().item() < 1e-5


def test_encode_documents_strips_padding(minilm):
    states = minilm.encode_documents(SENTENCES)
    ids, mask = minilm.tokenize(SENTENCES, 256)
    assert [s.shape[0] for s in states] == mask.sum(1).tolist()
    assert minilm.encode_documents([""])[0].shape[0] == 2  # empty document = [CLS] [SEP]


def test_score_independent_of_batch_and_padding(minilm):
    query = "why is sourdough sour"
    alone = [minilm.score_texts(query, [d]).item() for d in SENTENCES]
    together = minilm.score_texts(query, SENTENCES).tolist()
    reordered = minilm.score_texts(query, SENTENCES[::-1]).tolist()[::-1]
    assert together == pytest.approx(alone, abs=1e-5)
    assert reordered == pytest.approx(alone, abs=1e-5)


def test_stored_states_equal_text_scores(minilm):
    query = "volcanic ash"
    stored = [s.clone() for s in minilm.encode_documents(SENTENCES)]
    before = [s.clone() for s in stored]
    from_states = minilm.score(query, stored)
    assert torch.allclose(from_states, minilm.score_texts(query, SENTENCES), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(stored, before))  # documents are never updated


def _first_layer_io(model, query, docs):
    q, q_mask = model.encode_queries([query] * len(docs))
    d, d_mask = pad_states(model.encode_documents(docs))
    layer = model.interaction.layers[0]
    self_mask = query_self_mask(q_mask, q.dtype)
    cross_mask = torch.zeros(d_mask.shape, dtype=q.dtype).masked_fill(d_mask == 0, float("-inf"))[:, None, None]
    return layer, q, self_mask, d, cross_mask


@torch.no_grad()
def test_cls_does_not_read_the_document(minilm):
    layer, q, self_mask, d, cross_mask = _first_layer_io(minilm, "solar panels", SENTENCES[:2])
    out = layer(q, self_mask, d, cross_mask)
    assert (out[0, 0] - out[1, 0]).abs().max().item() < 1e-5  # [CLS] same for both documents
    assert (out[0, 1:] - out[1, 1:]).abs().max().item() > 1e-3  # query tokens do read them


@torch.no_grad()
def test_query_tokens_do_not_read_cls(minilm):
    layer, q, self_mask, d, cross_mask = _first_layer_io(minilm, "solar panels", SENTENCES[:1])
    base = layer(q, self_mask, d, cross_mask)
    q2 = q.clone()
    q2[:, 0] = torch.randn_like(q2[:, 0]) * 5
    changed = layer(q2, self_mask, d, cross_mask)
    assert (base[:, 1:] - changed[:, 1:]).abs().max().item() < 1e-5
    assert (base[:, 0] - changed[:, 0]).abs().max().item() > 1e-3  # but the [CLS] itself changes


def test_cross_attention_seeded_from_self_attention(tiny_mice):
    for layer in tiny_mice.interaction.layers:
        for a, b in zip(layer.self_attn.state_dict().values(), layer.cross_attn.state_dict().values()):
            assert torch.equal(a, b)
    # and they are separate parameters (training one does not move the other)
    layer = tiny_mice.interaction.layers[0]
    assert layer.self_attn.query.weight.data_ptr() != layer.cross_attn.query.weight.data_ptr()


def test_interaction_layers_are_backbone_layers_after_fusion(tiny_bert_dir, tiny_mice):
    from safetensors.torch import load_file

    hf = load_file(str(tiny_bert_dir / "model.safetensors"))
    k = lambda i: hf[f"encoder.layer.{i}.intermediate.dense.weight"]  # noqa: E731
    assert torch.equal(tiny_mice.bottom.layers[1].ffn.up.weight, k(1))
    assert torch.equal(tiny_mice.interaction.layers[0].ffn.up.weight, k(2))
    assert torch.equal(tiny_mice.interaction.layers[1].ffn.up.weight, k(3))


def test_save_load_identical_scores(tmp_path, tiny_mice):
    docs = SENTENCES[:3]
    before = tiny_mice.score_texts("bread", docs)
    loaded = MiceModel.from_pretrained(tiny_mice.save(tmp_path / "ckpt"))
    assert torch.equal(loaded.score_texts("bread", docs), before)
    assert loaded.fingerprint() == tiny_mice.fingerprint()
    assert loaded.config == tiny_mice.config


def test_delta_checkpoint_reads_bottom_from_base(tmp_path, tiny_bert_dir, tiny_mice):
    model = tiny_mice.with_config(base_model=str(tiny_bert_dir))
    path = model.save(tmp_path / "delta", delta=True)
    from safetensors.torch import load_file

    assert not any(k.startswith("bottom.") for k in load_file(str(path / "model.safetensors")))
    loaded = MiceModel.load(path)
    assert torch.equal(loaded.score_texts("bees", SENTENCES), model.score_texts("bees", SENTENCES))


def test_cross_encoder_conversion_keeps_head(tmp_path, minilm_dir):
    hf = write_tiny_bert(tmp_path / "ce", minilm_dir, cross_encoder=True, seed=3)
    model = MiceModel.from_pretrained(tmp_path / "ce", fusion_layer=2, num_interaction_layers=2)
    assert torch.equal(model.interaction.head.weight, hf.classifier.weight)
    assert torch.equal(model.interaction.head.bias, hf.classifier.bias)
    assert torch.equal(model.interaction.pooler.weight, hf.bert.pooler.dense.weight)


def test_layer_dropping_config(tiny_bert_dir):
    model = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=1, num_interaction_layers=1)
    assert len(model.bottom.layers) == 1 and len(model.interaction.layers) == 1
    with pytest.raises(ModelError, match="num_interaction_layers"):
        MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=3, num_interaction_layers=2)
    with pytest.raises(ModelError, match="fusion_layer"):
        MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=0)


def test_pickle_checkpoint_refused(tmp_path, tiny_bert_dir):
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, bad / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        MiceModel.from_pretrained(bad, fusion_layer=2, num_interaction_layers=2)
    # a MICE checkpoint whose weights were replaced by a pickle is refused too
    ckpt = tmp_path / "mice"
    MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2).save(ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save({}, ckpt / "model.pt")
    with pytest.raises(ModelError, match="pickle"):
        MiceModel.from_pretrained(ckpt)


def test_bad_model_inputs(tmp_path, tiny_bert_dir):
    with pytest.raises(ModelError, match="neither a local folder, a shipped model nor downloadable.*mice-minilm-l6"):
        MiceModel.from_pretrained("no-such-org/no-such-model-xyz")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="safetensors"):
        MiceModel.from_pretrained(broken, fusion_layer=2, num_interaction_layers=2)
    cfg = json.loads((tiny_bert_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="model_type"):
        MiceModel.from_pretrained(broken, fusion_layer=2, num_interaction_layers=2)


def test_bf16_scores_close_to_fp32(tiny_mice):
    fp32 = tiny_mice.score_texts("bread", SENTENCES)
    bf16 = tiny_mice.to(torch.bfloat16).score_texts("bread", SENTENCES)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max().item() < 0.05 * fp32.abs().max().item() + 1e-2


def test_full_cross_encoder_scores_pairs(tmp_path, minilm_dir):
    from mice_index.crossencoder import CrossEncoder

    hf = write_tiny_bert(tmp_path / "ce", minilm_dir, cross_encoder=True, seed=5)
    ce = CrossEncoder(tmp_path / "ce", max_length=64)
    scores = ce.score("bees", SENTENCES[:3], batch_size=2)
    enc = ce.tokenizer(["bees"], [SENTENCES[1]], return_tensors="pt")
    with torch.no_grad():
        ref = hf(**enc).logits[0, 0]
    assert scores.shape == (3,) and abs(scores[1].item() - ref.item()) < 1e-5
    (tmp_path / "ce" / "model.safetensors").unlink()
    torch.save({}, tmp_path / "ce" / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        CrossEncoder(tmp_path / "ce")


@torch.no_grad()
def test_last_layer_shortcut_equals_full_layer(minilm):
    """Interaction.forward computes only the [CLS] row of the last layer: same scores as in full."""
    q, q_mask = minilm.encode_queries(["why is sourdough sour"] * 3)
    d, d_mask = pad_states(minilm.encode_documents(SENTENCES[:3]))
    inter = minilm.interaction
    self_mask = query_self_mask(q_mask, q.dtype)
    cross_mask = torch.zeros(d_mask.shape).masked_fill(d_mask == 0, torch.finfo(torch.float32).min)[:, None, None]
    x = q
    for layer in inter.layers:
        x = layer(x, self_mask, d, cross_mask)
    full = inter.head(torch.tanh(inter.pooler(x[:, 0]))).squeeze(-1)
    assert torch.allclose(inter(q, q_mask, d, d_mask), full, atol=1e-6)


def test_fingerprint_ignores_tokenizer_call_state(tmp_path, tiny_bert_dir):
    fresh = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2)
    used = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2)
    used.encode_documents(SENTENCES)  # the fast tokenizer now records truncation/padding settings
    assert used.fingerprint() == fresh.fingerprint()
    assert MiceModel.load(used.save(tmp_path / "saved")).fingerprint() == fresh.fingerprint()
    other = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=1, num_interaction_layers=1)
    assert other.fingerprint() != fresh.fingerprint()  # a different ℓ* means different states


def _maxsim_by_hand(model, query, doc):
    """ColBERT MaxSim over layer-ℓ* states, written out token by token ([CLS]/[SEP] excluded)."""
    with torch.inference_mode():
        q, _ = model.encode_queries([query])
        d = model.encode_documents([doc])[0]
    q, d = q[0, 1:-1], d[1:-1]
    return sum(max(float(torch.dot(qi, dj) / (qi.norm() * dj.norm())) for dj in d) for qi in q)


def test_maxsim_head_starts_as_parameter_free_maxsim(minilm_dir):
    model = MiceModel.from_pretrained(minilm_dir, score_head="cls+maxsim")
    assert model.config.score_head == "cls+maxsim" and not model.interaction.head.weight.any()
    docs = SENTENCES[:4]
    got = model.score_texts("how do bees make honey", docs)
    want = torch.tensor([_maxsim_by_hand(model, "how do bees make honey", d) for d in docs])
    torch.testing.assert_close(got, want + model.interaction.head.bias, atol=1e-4, rtol=1e-5)


def test_maxsim_head_trained_weights_survive_save_load(tmp_path, tiny_bert_dir):
    model = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2, score_head="cls+maxsim")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.interaction.late.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = model.score_texts("bread", SENTENCES[:3])
    loaded = MiceModel.from_pretrained(model.save(tmp_path / "ckpt"))
    assert loaded.config.score_head == "cls+maxsim"
    assert torch.equal(loaded.score_texts("bread", SENTENCES[:3]), before)


def test_paper_head_is_default_and_has_no_late_term(tmp_path, tiny_bert_dir, minilm_dir):
    kw = dict(fusion_layer=2, num_interaction_layers=2)
    assert MiceModel.from_pretrained(tiny_bert_dir, **kw).interaction.late is None
    write_tiny_bert(tmp_path / "ce", minilm_dir, cross_encoder=True, seed=3)
    assert MiceModel.from_pretrained(tmp_path / "ce", **kw).config.score_head == "cls"
    with pytest.raises(ModelError, match="score_head"):
        MiceModel.from_pretrained(tiny_bert_dir, score_head="mean", **kw)


def test_maxsim_ignores_empty_documents(tiny_bert_dir):
    model = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2, score_head="cls+maxsim")
    s = model.score_texts("bread", ["", "fresh bread"])  # "" is [CLS] [SEP]: no inner token
    assert torch.isfinite(s).all() and float(s[0]) == pytest.approx(float(model.interaction.head.bias.detach()), abs=1e-6)
