"""Load the MICE authors' exported checkpoints (xpmir/mice; e.g. the hub collection "MICE").

Their export (the reference code, src/MICE/modeling/mice.py, `MiceCrossEncoder.save_model` and
experimaestro's `save`) is a folder holding:

    experimaestro.json                  the model's options (experimaestro objects; options left at
                                        their default are omitted)
    [model/]model.safetensors           the raw state dict (names below)
    [model/]contextualization_layers/config.json, [model/]interaction_layers/config.json
                                        the backbone configs of the bottom and the top layers
    tokenizer files                     in model/ or at the top

`load_authors_model` maps their names onto MICE's modules through a fixed table per family, checks
every tensor's presence and shape, refuses unknown tensors and options this implementation does
not run exactly (global_cls_token, extra_attn_bias, lexical_bias, compress_dim != 1, mean pooling),
and records their layer options in `MiceConfig` (README, "Using the authors' MICE models").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mice_index.checkpoints import BertFamily, load_safetensors, load_tokenizer, read_json
from mice_index.errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["DEFINITION", "is_authors_export", "load_authors_model", "read_options"]

DEFINITION = "experimaestro.json"
# the reference code's options and their defaults (`MiceCrossEncoder` Params)
OPTION_DEFAULTS = {
    "n_contextualization_layers": 6, "n_docs_ctx_layers": None, "n_interaction_layers": None,
    "bound_bottom_layers": True, "cross_attn_first": True, "mask_cls_to_doc": False,
    "mask_query_to_cls": True, "global_cls_token": False, "extra_attn_bias": False,
    "lexical_bias": False, "compress_dim": 1.0, "pooling_method": None,
}
# options that change the scores and are not implemented here: refused unless at these values
UNSUPPORTED = {"global_cls_token": False, "extra_attn_bias": False, "lexical_bias": False,
               "compress_dim": 1.0}
IGNORED = {"hf_id", "tokenizer", "freeze_base", "random_top_layers", "doc", "bibtex"}  # training / metadata
TOKENIZER_FIELDS = {"model_id", "max_length", "max_query_length", "max_doc_length"}
FAMILY_CLASSES = {"bert": "BertMiceCrossEncoder", "modernbert": "ModernBertMiceCrossEncoder"}
# tensors a state dict may hold that are not weights (older transformers saved these buffers)
IGNORED_TENSORS = {"embeddings.position_ids", "embeddings.token_type_ids"}


def is_authors_export(path: Path) -> bool:
    return (path / DEFINITION).is_file()


def _class_name(obj: dict) -> str:
    return str(obj.get("type") or obj.get("typename") or "").rsplit(".", 1)[-1]


def read_options(path: Path) -> tuple[str, dict, dict]:
    """experimaestro.json -> (reference class name, model options with defaults filled in,
    tokenizer options). ModelError for a file without exactly one MICE model object, an unknown
    option or an unsupported option value."""
    raw = read_json(path / DEFINITION)
    objects = raw.get("objects") if isinstance(raw, dict) else None
    if not isinstance(objects, list):
        raise ModelError(f"{path / DEFINITION}: no experimaestro 'objects' list; not an authors' MICE export")
    models = [o for o in objects if isinstance(o, dict) and _class_name(o).endswith("MiceCrossEncoder")]
    if len(models) != 1:
        raise ModelError(f"{path / DEFINITION}: expected one MICE model object, found {len(models)} "
                         f"({sorted({_class_name(o) for o in objects if isinstance(o, dict)})})")
    fields = dict(models[0].get("fields") or {})
    unknown = sorted(set(fields) - set(OPTION_DEFAULTS) - IGNORED)
    if unknown:
        raise ModelError(f"{path / DEFINITION}: unknown MICE option(s) {unknown}; this export comes from "
                         "a reference code version mice-index does not know")
    options = {**OPTION_DEFAULTS, **{k: v for k, v in fields.items() if k in OPTION_DEFAULTS}}
    for name, supported in UNSUPPORTED.items():
        if options[name] != supported:
            raise ModelError(f"{path}: option {name} = {options[name]!r} is not supported by mice-index "
                             f"(only {supported!r}); this model cannot be run exactly")
    if options["pooling_method"] not in (None, "cls"):
        raise ModelError(f"{path}: pooling_method {options['pooling_method']!r} is not supported (only cls)")
    tok = [o for o in objects if isinstance(o, dict) and _class_name(o) == "MICEQueryDocTokenizer"]
    tok_fields = {k: v for k, v in (tok[0].get("fields") or {}).items() if k in TOKENIZER_FIELDS} if tok else {}
    return _class_name(models[0]), options, tok_fields


def _first(path: Path, candidates: list[str], what: str) -> Path:
    for c in candidates:
        if (path / c).is_file():
            return path / c
    raise ModelError(f"{path}: no {what} (looked for {', '.join(candidates)})")


def _bert_table(cfg, has_pooler: bool) -> dict[str, str]:
    """Ours -> theirs for the BERT family."""
    t = {f"bottom.embeddings.{k}.weight": f"embeddings.{v}.weight" for k, v in BertFamily.EMB.items()}
    t["bottom.embeddings.norm.bias"] = "embeddings.LayerNorm.bias"

    def layer(ours: str, theirs: str, subs: list[tuple[str, str, dict]]) -> dict[str, str]:
        return {f"{ours}.{a}.{k}.{p}": f"{theirs}.{b}{v}.{p}" for a, b, table in subs
                for k, v in table.items() for p in ("weight", "bias")}

    attn = {k: v.removeprefix("attention.") for k, v in BertFamily.ATTN.items()}  # self.query, output.dense, ...
    block = [("attn", "attention.", attn), ("ffn", "", BertFamily.FFN)]
    doc_name = "bottom_layers" if cfg.shared_bottom else "document_bottom_layers"
    for i in range(cfg.doc_layers):
        t |= layer(f"bottom.layers.{i}", f"{doc_name}.{i}", block)
    if not cfg.shared_bottom:
        for i in range(cfg.fusion_layer):
            t |= layer(f"query_layers.{i}", f"query_bottom_layers.{i}", block)
    for j in range(cfg.num_interaction_layers):
        t |= layer(f"interaction.layers.{j}", f"top_layers.{j}",
                   [("self_attn", "attention.", attn), ("cross_attn", "crossattention.", attn), ("ffn", "", BertFamily.FFN)])
    if has_pooler:
        t |= {"interaction.pooler.weight": "pooler.dense.weight", "interaction.pooler.bias": "pooler.dense.bias"}
    return t | {"interaction.head.weight": "classifier.weight", "interaction.head.bias": "classifier.bias"}


# ModernBERT: our module names are theirs below these prefixes (ours -> theirs)
MODERNBERT_PREFIXES = {"bottom.embeddings.": "embeddings.", "interaction.pre_head.final_norm.": "final_norm.",
                       "interaction.pre_head.head.": "head.", "interaction.head.": "classifier.",
                       "interaction.layers.": "top_layers.", "query_layers.": "query_bottom_layers."}


def _modernbert_table(model) -> dict[str, str]:
    prefixes = {**MODERNBERT_PREFIXES, "bottom.layers.": "bottom_layers." if model.config.shared_bottom
                else "document_bottom_layers."}
    table = {}
    for name in model.state_dict():
        hit = [p for p in prefixes if name.startswith(p)]
        if len(hit) != 1:
            raise ModelError(f"internal: no ModernBERT name mapping for {name}")  # a code defect, not input
        table[name] = prefixes[hit[0]] + name.removeprefix(hit[0])
    return table


def load_authors_model(path: Path):
    """An authors' export folder -> MiceModel (eval mode) with their options; ModelError for a
    malformed or unsupported export (one line saying what and where)."""
    from dataclasses import replace

    from mice_index.model import MiceConfig, MiceModel

    cls_name, options, tok = read_options(path)
    base = next((d for d in (path / "model", path) if (d / "contextualization_layers" / "config.json").is_file()), None)
    ctx_file = base / "contextualization_layers" / "config.json" if base else _first(path, ["config.json"], "backbone config")
    top_file = base / "interaction_layers" / "config.json" if base else _first(path, ["head/config.json"], "interaction config")
    ctx, top = read_json(ctx_file), read_json(top_file)
    family = ctx.get("model_type")
    if family not in FAMILY_CLASSES:
        raise ModelError(f"{ctx_file}: backbone model_type {family!r} is not supported; supported: {sorted(FAMILY_CLASSES)}")
    if cls_name != FAMILY_CLASSES[family]:
        raise ModelError(f"{path}: {DEFINITION} names {cls_name} but the backbone config is {family!r}")
    for key in ("hidden_size", "num_attention_heads", "intermediate_size"):
        if top.get(key) != ctx.get(key):
            raise ModelError(f"{top_file}: {key} {top.get(key)} differs from the bottom's {ctx.get(key)}")
    n_ctx, n_layers = options["n_contextualization_layers"], ctx.get("num_hidden_layers", 0)
    n_top = options["n_interaction_layers"] or n_layers - n_ctx
    if options["bound_bottom_layers"] and options["n_docs_ctx_layers"] not in (None, n_ctx):
        raise ModelError(f"{path / DEFINITION}: n_docs_ctx_layers {options['n_docs_ctx_layers']} differs from "
                         f"n_contextualization_layers {n_ctx} with bound_bottom_layers = true (the reference refuses it too)")
    shared = bool(options["bound_bottom_layers"])
    mice = dict(fusion_layer=n_ctx, num_interaction_layers=n_top, cross_attn_first=bool(options["cross_attn_first"]),
                cls_cross_attention="mean" if options["mask_cls_to_doc"] else "attend",
                mask_query_to_cls=bool(options["mask_query_to_cls"]), shared_bottom=shared,
                doc_fusion_layer=None if shared else (options["n_docs_ctx_layers"] or n_ctx), base_model=None)
    max_len = tok.get("max_length")
    for name, default in (("max_query_length", 32), ("max_doc_length", 256)):
        value = tok.get(name) or max_len or default
        mice[name] = min(int(value), ctx.get("max_position_embeddings", 512))
    weights_file = _first(path, ["model/model.safetensors", "model.safetensors"], "model.safetensors")
    theirs = load_safetensors(weights_file.parent, weights_file.name)
    theirs = {k: v for k, v in theirs.items() if k not in IGNORED_TENSORS}
    if family == "bert":
        cfg = MiceConfig.from_hf(ctx, **mice)
        cfg = replace(cfg, has_pooler="pooler.dense.weight" in theirs)
    else:
        cfg = modernbert_config(ctx, mice)
    model = MiceModel(cfg, load_tokenizer(_tokenizer_dir(path, weights_file.parent)))
    table = _bert_table(cfg, cfg.has_pooler) if family == "bert" else _modernbert_table(model)
    absent = sorted(v for v in table.values() if v not in theirs)
    unknown = sorted(set(theirs) - set(table.values()))
    if absent or unknown:
        raise ModelError(f"{weights_file}: tensors do not match the options in {DEFINITION}: "
                         f"missing {len(absent)} {absent[:3]}, unknown {len(unknown)} {unknown[:3]}")
    model._load_own({ours: theirs[name].to(torch.float32) for ours, name in table.items()})
    log.info("loaded the authors' %s MICE from %s (%s)", family, path, options)
    return model.eval()


def modernbert_config(hf: dict, mice: dict, local_attention: bool = False):
    """MiceConfig of a ModernBERT backbone config (dict) and MICE options."""
    from mice_index.model import MiceConfig

    if hf.get("model_type") != "modernbert":
        raise ModelError(f"not a ModernBERT config (model_type {hf.get('model_type')!r})")
    try:
        arch = dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                    num_attention_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                    num_hidden_layers=hf["num_hidden_layers"])
    except KeyError as exc:
        raise ModelError(f"ModernBERT config lacks {exc}") from exc
    return MiceConfig(**arch, max_position_embeddings=hf.get("max_position_embeddings", 8192), type_vocab_size=1,
                      pad_token_id=hf.get("pad_token_id", 0) or 0, hidden_dropout=hf.get("classifier_dropout", 0.0),
                      attention_dropout=hf.get("attention_dropout", 0.0), has_pooler=False, family="modernbert",
                      backbone=json.loads(json.dumps(hf)), local_attention=local_attention, **mice)


def _tokenizer_dir(path: Path, weights_dir: Path) -> Path:
    for d in (weights_dir, path):
        if any((d / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
            return d
    raise ModelError(f"{path}: no tokenizer files (tokenizer.json / vocab.txt)")
