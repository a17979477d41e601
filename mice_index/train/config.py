"""Training configuration: frozen dataclasses read from TOML, with dotted `section.key=value` overrides.

Sections: [model] what to start from and the MICE architecture; [data] where training queries come
from (a queries file, a teacher file, or pseudo-queries generated from corpora) and the explicit
train/dev split; [teacher] who labels the candidates; [train] optimisation.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from mice_index.errors import MiceIndexError

LossName = Literal["marginmse", "kl"]
TeacherKind = Literal["ensemble", "hybrid", "cross-encoder", "file"]
TEACHER_MEMBERS = ("bm25", "dense", "splade", "e5")  # mice_index.train.members.MEMBERS
TeacherFormat = Literal["msmarco-tsv", "jsonl"]


class TrainConfigError(MiceIndexError):
    """A training config file or override is invalid."""


@dataclass(frozen=True)
class ModelSpec:
    init: str = "sentence-transformers/all-MiniLM-L6-v2"  # HF encoder / HF cross-encoder / MICE checkpoint
    fusion_layer: int = 3
    num_interaction_layers: int = 3
    freeze_bottom: bool = True  # fast path: document states computed once
    max_query_length: int = 32
    max_doc_length: int = 256
    base_model: str | None = None  # recorded for delta checkpoints; default: `init` when it is an HF model
    score_head: str = "cls"  # "cls" (the paper's) or "cls+maxsim" (MaxSim-initialised late-interaction term)
    train_codec: str | None = None  # train on states round-tripped through this codec (e.g. "compact")
    save_dtype: Literal["fp32", "fp16"] = "fp32"  # weights of the final model file (fp16 halves a shipped model)


@dataclass(frozen=True)
class PseudoSpec:
    """Mix of pseudo-query kinds (relative weights) generated from each document."""

    title: float = 0.35
    sentence: float = 0.3
    keywords: float = 0.2
    span: float = 0.15
    max_words: int = 16


@dataclass(frozen=True)
class DataSpec:
    corpora: tuple[str, ...] = ()  # BEIR folders / JSONL / irds:; only their documents are read
    queries: str | None = None  # real training queries (with corpora[0]); None -> pseudo-queries
    max_queries_per_corpus: int = 1500  # pseudo-queries: documents sampled per corpus
    dev_queries_per_corpus: int = 40  # held-out pseudo-queries (their source docs never train)
    dev_fraction: float = 0.05  # for teacher-file / real-query routes: held-out share of queries
    depth: int = 100  # first-stage depth (BM25 and dense, each) for mining candidates
    list_size: int = 16  # documents per training query (KL); MarginMSE uses pairs from the list
    hard_negatives: int = 7  # of list_size - 1 negatives, this many from the top of the fused list
    dev_candidates: int = 20  # candidates re-ranked per dev query
    require_source_in_candidates: bool = True  # drop pseudo-queries whose source doc is not mined
    # of the hard negatives, this many are the init model's (the student's) own top-ranked documents
    # among the teacher's top `student_depth`, instead of the teacher's top ones
    student_negatives: int = 0
    student_depth: int = 30
    # Inverse Cloze Task (Lee et al., ACL 2019): share of pseudo-queries whose words are cut out of
    # their source document (title, sentence and span kinds), so matching must go beyond copy detection
    ict: float = 0.0
    pseudo: PseudoSpec = field(default_factory=PseudoSpec)


@dataclass(frozen=True)
class TeacherSpec:
    # "ensemble": weighted z-score fusion of `members` over the whole corpus (train/ensemble.py);
    # "hybrid": the same with members bm25 + dense (the first stage itself, earlier default)
    kind: TeacherKind = "hybrid"
    # for kind="ensemble". Default bm25 + dense: adding SPLADE-tiny lowered the teacher's own
    # nDCG@10 on the real dev queries (BENCHMARKS.md → Training); splade / e5 are opt-in, and a
    # member whose package is missing is one error line with the install command
    members: tuple[str, ...] = ("bm25", "dense")
    weights: tuple[float, ...] = ()  # one per member; () = equal weights
    path: str | None = None  # cross-encoder model (kind=cross-encoder) or scores file (kind=file)
    format: TeacherFormat = "msmarco-tsv"
    temperature: float = 1.0  # KL: teacher distribution softmax(score / temperature)
    positive_bonus: float = 0.0  # added to the source document's teacher score (pseudo-queries)
    batch_size: int = 32


@dataclass(frozen=True)
class OptimSpec:
    loss: LossName = "kl"
    steps: int = 1000
    batch_queries: int = 4  # queries per micro-batch (x list_size documents)
    grad_accum: int = 1
    lr: float = 2e-4  # interaction layers (and bottom when unfrozen)
    head_lr: float = 1e-3  # pooler + head
    late_lr: float | None = None  # the "cls+maxsim" late-interaction term (no weight decay); None: lr
    weight_decay: float = 0.01
    warmup: int = 50
    max_grad_norm: float = 1.0
    seed: int = 13
    checkpoint_every: int = 200
    eval_every: int = 200
    threads: int = 2
    bf16: bool = False  # CPU autocast (measured slower than fp32 on AVX-512 without AMX; see BENCHMARKS.md)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    train: OptimSpec = field(default_factory=OptimSpec)
    output: str = "mice-model"
    cache_dir: str | None = None  # document-state cache (default: <output>/cache)

    def __post_init__(self):
        t, d, o = self.teacher, self.data, self.train
        checks = [
            (o.loss in LossName.__args__, f"train.loss must be one of {LossName.__args__}, got {o.loss!r}"),
            (t.kind in TeacherKind.__args__, f"teacher.kind must be one of {TeacherKind.__args__}, got {t.kind!r}"),
            (t.format in TeacherFormat.__args__, f"teacher.format must be one of {TeacherFormat.__args__}"),
            (t.kind in ("hybrid", "ensemble") or t.path, f"teacher.kind={t.kind!r} needs teacher.path"),
            (bool(t.members) and set(t.members) <= set(TEACHER_MEMBERS),
             f"teacher.members must be a non-empty subset of {TEACHER_MEMBERS}, got {list(t.members)}"),
            (not t.weights or (len(t.weights) == len(t.members) and min(t.weights) >= 0 and max(t.weights) > 0),
             "teacher.weights: one non-negative weight per member (not all 0), or none for equal weights"),
            (0 <= d.student_negatives <= d.hard_negatives, "data.student_negatives must be in 0..hard_negatives"),
            (d.student_depth >= 2, "data.student_depth must be >= 2"),
            (t.temperature > 0, "teacher.temperature must be > 0"),
            (self.model.save_dtype in ("fp32", "fp16"), "model.save_dtype must be 'fp32' or 'fp16'"),
            (d.list_size >= 2, "data.list_size must be >= 2"),
            (0 <= d.hard_negatives < d.list_size, "data.hard_negatives must be in 0..list_size-1"),
            (d.depth >= d.list_size and d.depth >= d.dev_candidates, "data.depth must be >= list_size and dev_candidates"),
            (o.steps >= 1 and o.batch_queries >= 1 and o.grad_accum >= 1, "train.steps/batch_queries/grad_accum must be >= 1"),
            (o.lr > 0 and o.head_lr > 0, "train.lr and train.head_lr must be > 0"),
            (o.checkpoint_every >= 1 and o.eval_every >= 1, "train.checkpoint_every/eval_every must be >= 1"),
            (0 <= d.dev_fraction < 1, "data.dev_fraction must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainConfigError(message)

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"model": ModelSpec, "data": DataSpec, "teacher": TeacherSpec, "train": OptimSpec}


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TrainConfigError(f"{where}: unknown option(s) {unknown}; known: {sorted(known)}")
    out = {}
    for k, v in values.items():
        if k == "pseudo" and cls is DataSpec:
            v = _build(PseudoSpec, v, f"{where}.pseudo")
        elif k in ("corpora", "members"):
            v = tuple([v] if isinstance(v, str) else v)
        elif k == "weights":
            v = tuple(v)
        out[k] = v
    return cls(**out)


def config_from_dict(raw: dict, where: str = "config") -> TrainConfig:
    raw = dict(raw)
    top = {k: raw.pop(k) for k in ("output", "cache_dir") if k in raw}
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise TrainConfigError(f"{where}: unknown section(s) {unknown}; known: {sorted(_SECTIONS)} + output, cache_dir")
    try:
        return TrainConfig(**{name: _build(cls, raw.get(name, {}), f"{where} [{name}]")
                              for name, cls in _SECTIONS.items()}, **top)
    except TypeError as exc:
        raise TrainConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML config (or defaults when None) and apply `section.key=value` overrides (values
    parsed as Python/TOML literals when possible, else kept as strings)."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"{path}: config file not found")
        try:
            raw = tomllib.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TrainConfigError(f"{path}: invalid UTF-8 at byte {exc.start} (TOML files are UTF-8)") from None
        except tomllib.TOMLDecodeError as exc:
            raise TrainConfigError(f"{path}: invalid TOML ({exc})") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainConfigError(f"override {item!r}: expected section.key=value")
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TrainConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = _literal(value.strip())
    return config_from_dict(raw, str(path) if path else "config")


def _literal(text: str):
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def with_overrides(cfg: TrainConfig, **sections) -> TrainConfig:
    """Programmatic override: with_overrides(cfg, train={"steps": 5})."""
    changes = {k: replace(getattr(cfg, k), **v) if isinstance(v, dict) else v for k, v in sections.items()}
    return replace(cfg, **changes)
