"""The streaming scorer gives the scores the model gives from text, whatever the batching."""

import numpy as np
import pytest
import torch

from mice_index.scorer import MiceScorer, ScorerConfig, _token_batches

DOCS = [
    "Honey bees store nectar in wax cells and fan it with their wings until it thickens.",
    "A volcano is a vent in the crust.",
    "Solar panels still produce power on cloudy days, only less of it.",
    "",
    "Sailors once found their latitude by measuring the angle of the pole star above the horizon, "
    "a method that needs nothing but a clear night and a simple instrument.",
]


class ListReader:
    """States kept in memory, as an index would return them."""

    def __init__(self, model, texts):
        self.states = [s.numpy() for s in model.encode_documents(texts)]
        self.calls = 0

    def lengths(self, rows):
        return np.array([self.states[r].shape[0] for r in rows])

    def get_states(self, rows):
        self.calls += 1
        return [self.states[r] for r in rows]


@pytest.mark.parametrize("batch_tokens", [16_384, 40, 1])
@pytest.mark.parametrize("prefetch", [0, 2])  # read in this thread / by a reader thread
def test_scores_match_text_path(tiny_mice, batch_tokens, prefetch):
    reader = ListReader(tiny_mice, DOCS)
    queries = ["how do bees make honey", "navigation by stars"]
    rows = [[0, 1, 2, 3, 4], [4, 0, 3]]
    cfg = ScorerConfig(batch_tokens=batch_tokens, dtype="fp32", quantize="none", prefetch=prefetch)
    got = MiceScorer(tiny_mice, reader, cfg).score(queries, rows)
    for q, r, g in zip(queries, rows, got):
        want = tiny_mice.score_texts(q, [DOCS[i] for i in r]).numpy()
        np.testing.assert_allclose(g, want, atol=1e-5)


def test_empty_candidate_lists(tiny_mice):
    scorer = MiceScorer(tiny_mice, ListReader(tiny_mice, DOCS), ScorerConfig(dtype="fp32", quantize="none"))
    out = scorer.score(["a", "b"], [[], [1]])
    assert out[0].shape == (0,) and out[1].shape == (1,)
    assert scorer.score([], []) == []


@pytest.mark.parametrize("prefetch", [0, 2])
def test_reader_errors_reach_the_caller(tiny_mice, prefetch):
    class Broken:
        def lengths(self, rows):
            return np.full(len(rows), 5)

        def get_states(self, rows):
            raise OSError("shard 00003 unreadable")

    scorer = MiceScorer(tiny_mice, Broken(), ScorerConfig(dtype="fp32", batch_tokens=5, quantize="none",
                                                          prefetch=prefetch))
    with pytest.raises(OSError, match="00003"):
        scorer.score(["q"], [[0, 1, 2]])


def test_bf16_ranking_close_to_fp32(tiny_mice):
    reader = ListReader(tiny_mice, DOCS)
    fp32 = MiceScorer(tiny_mice, reader, ScorerConfig(dtype="fp32", quantize="none")).score(["bees"], [[0, 1, 2, 4]])[0]
    bf16 = MiceScorer(tiny_mice, reader, ScorerConfig(dtype="bf16")).score(["bees"], [[0, 1, 2, 4]])[0]
    assert np.abs(bf16 - fp32).max() < 0.05
    tiny_mice.to(torch.float32)


def test_token_batches_respect_budget():
    lengths = np.array([50, 40, 40, 10, 3])
    slices = list(_token_batches(lengths, 100))
    assert [lengths[s].tolist() for s in slices] == [[50, 40], [40, 10], [3]]
    assert sum(s.stop - s.start for s in _token_batches(lengths, 1)) == 5  # over-long docs go alone


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("query_words", [2, 30])  # 4 heads × tokens < 32 hidden: absorbed path; else standard
@pytest.mark.parametrize("pair_query", [[2, 0, 1, 0, 2], [0, 0, 1, 2, 2]])  # scattered / in runs
@pytest.mark.parametrize("max_runs", [16, 0])  # a product per run of one query's pairs / one batched product
@pytest.mark.parametrize("score_head", ["cls", "cls+maxsim"])
def test_inference_path_equals_model(tiny_bert_dir, layers, query_words, pair_query, max_runs, score_head,
                                     monkeypatch):
    """fast.score_pairs (query work shared, absorbed cross-attention) == Interaction.forward."""
    from mice_index.model import MiceModel, pad_states
    from mice_index.scorer import fast
    from mice_index.scorer.fast import score_pairs

    monkeypatch.setattr(fast, "MAX_RUNS", max_runs)

    model = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=1, num_interaction_layers=layers,
                                      max_query_length=64, score_head=score_head)
    torch.manual_seed(1)
    with torch.no_grad():  # a random init scores every pair alike, and HF's biases are zero:
        for name, p in model.interaction.named_parameters():  # spread scores, give biases values
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.5 if name.endswith("bias") else 0.3)
    queries = ["bees " * query_words, "stars", "wax cells and honey " * (query_words // 4 + 1)]
    q, q_mask = model.encode_queries(queries)
    docs, d_mask = pad_states([torch.randn(n, 32) * 3 for n in (9, 1, 30, 17, 30)])
    pair_query = torch.tensor(pair_query)
    with torch.inference_mode():
        want = model.interaction(q[pair_query], q_mask[pair_query], docs, d_mask)
        got = score_pairs(model.interaction, q, q_mask, pair_query, docs, d_mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert want.std() > 0.02  # the pairs really differ
