"""One bottom pass per query serves the dense first stage and MICE when the index's dense vectors
come from the MICE model's own bottom (`dense.source` "tower"): same candidates, same scores."""

from __future__ import annotations

import numpy as np
import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.model import MiceModel
from mice_index.scorer import ScorerConfig
from mice_index.search import DenseQueryEncoder, SearchConfig, Searcher
from mice_index.sources import sample_collection

EXACT = SearchConfig(candidates="hybrid", depth=12, alpha=0.0, scorer=ScorerConfig(dtype="fp32", quantize="none"))
QUERIES = ["how do honey bees make honey",
           "coral reefs " * 20]  # over the 32-token MICE query length: the dense stage encodes it itself


@pytest.fixture(scope="module")
def tower_index(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("shared")
    model = MiceModel.from_pretrained(minilm_dir, fusion_layer=3, num_interaction_layers=2, max_doc_length=64)
    build_index(sample_collection(), root / "idx", BuildConfig(codec="fp32", dtype="fp32"), model=model)
    return root / "idx", model


def test_dense_stage_and_mice_share_the_bottom(tower_index):
    idx, model = tower_index
    shared = Searcher.open(idx, model=model, config=EXACT)
    assert shared.reader.manifest.dense.source == "tower"
    assert shared._embed.model is shared.model  # no second copy of the backbone's bottom
    alone = Searcher(shared.reader, model, EXACT, DenseQueryEncoder.for_index(shared.reader))
    assert alone._embed.model is not model
    q, mask = shared._shared_query_states(QUERIES[:1])
    np.testing.assert_allclose(shared._embed.from_states(q, mask), alone._embed(QUERIES[:1]), atol=1e-5)
    for text in QUERIES:
        got, want = shared.search(text, k=8), alone.search(text, k=8)
        assert [h.doc_id for h in got] == [h.doc_id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    assert shared._shared_query_states(QUERIES)[1].sum(1).max() == model.config.max_query_length  # cut: fallback


def test_no_sharing_without_reranker_or_dense(tower_index):
    idx, model = tower_index
    assert Searcher.open(idx, model=model, config=SearchConfig(candidates="bm25"))._shared_query_states(["x"]) is None
    none = Searcher.open(idx, model=model, config=SearchConfig(rerank="none"))
    assert none._shared_query_states(["x"]) is None and none._embed.model is not model
