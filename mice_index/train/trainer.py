"""The training loop: distil a teacher into MICE's interaction layers (and optionally the bottom).

Fast CPU path (model.freeze_bottom): the bottom equals the backbone's, so document states are
computed once per corpus (`states.py`, cached) and only interaction layers + pooler + head train.
Checkpoints (safetensors only: trainable weights, AdamW moments, JSON state) are written every
`checkpoint_every` steps and on completion; a rerun with the same config resumes from them and
reaches exactly the weights of an uninterrupted run (data order and dropout are functions of
(seed, step), not of a running RNG).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mice_index.errors import ModelError
from mice_index.dense_tower import DenseTower
from mice_index.model import CONFIG_NAME, MiceModel, pad_states
from mice_index.train.config import TrainConfig
from mice_index.train.data import Corpus, Example, TrainingSet, _seed, build_training_set
from mice_index.train.loss import compute_loss
from mice_index.train.states import encode_corpus, load_or_encode, round_trip

log = logging.getLogger(__name__)

DENSE_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
CKPT = "checkpoint"


class ResumeError(ModelError):
    """A checkpoint in the output folder does not belong to this configuration."""


def init_model(cfg: TrainConfig) -> MiceModel:
    m = cfg.model
    from mice_index.defaults import DEFAULT_MODEL_DIR
    from mice_index.model import resolve_model_path

    # "default": the shipped model (domain adaptation: `train --init default --corpus MY_CORPUS`)
    path = DEFAULT_MODEL_DIR if m.init == "default" else resolve_model_path(m.init)
    if (path / CONFIG_NAME).exists():
        model = MiceModel.load(path)
    else:
        model = MiceModel.from_pretrained(path, fusion_layer=m.fusion_layer, num_interaction_layers=m.num_interaction_layers,
                                          max_query_length=m.max_query_length, max_doc_length=m.max_doc_length,
                                          score_head=m.score_head)
        model = model.with_config(base_model=m.base_model or m.init)
    if m.base_model and model.config.base_model != m.base_model:
        model = model.with_config(base_model=m.base_model)
    return model


def dense_encoder(model: MiceModel) -> tuple[MiceModel, DenseTower]:
    """(bottom model, tower) producing all-MiniLM-L6-v2 embeddings: the model itself when its bottom
    is that backbone's (one pass gives states and embeddings), else a separate backbone copy."""
    from mice_index.defaults import load_dense_tower

    try:
        tower = load_dense_tower(model, DENSE_BACKBONE) if model.config.hidden_size == 384 else None
    except ModelError:
        tower = None
    if tower is not None:
        return model, tower
    ref = MiceModel.from_pretrained(DENSE_BACKBONE, fusion_layer=3, num_interaction_layers=1)
    return ref, DenseTower.from_backbone(DENSE_BACKBONE, ref.config)


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    seconds: float
    dev: dict
    history: list


def ndcg_at(ranked_rows: list[int], relevant: frozenset[int], k: int = 10) -> float:
    gains = [1.0 / math.log2(i + 2) for i, r in enumerate(ranked_rows[:k]) if r in relevant]
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return sum(gains) / ideal if ideal else 0.0


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = False, console=None):
        self.cfg, self.progress, self.console = cfg, progress, console
        self.out = Path(cfg.output)
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"

    def _say(self, text: str) -> None:
        log.info(text)
        if self.console is not None:
            self.console.print(text, highlight=False)

    # -- setup --
    def prepare(self) -> tuple[MiceModel, TrainingSet]:
        cfg = self.cfg
        torch.set_num_threads(cfg.train.threads)
        model = init_model(cfg)
        need_dense = cfg.teacher.kind != "file"
        dense_model, tower = dense_encoder(model) if need_dense else (None, None)
        shared = dense_model is model

        def attach(corpus: Corpus) -> None:
            t0 = time.time()
            key = corpus.name  # a cache entry for other documents under that name is re-encoded
            if cfg.model.freeze_bottom or shared:
                corpus.states = load_or_encode(model, corpus.doc_ids, corpus.texts, self.cache / model.fingerprint(),
                                               key, tower if shared else None)
            if need_dense and not shared:
                st = load_or_encode(dense_model, corpus.doc_ids, corpus.texts,
                                    self.cache / dense_model.fingerprint(), key, tower)
                if corpus.states is None:
                    corpus.states = st
                else:
                    corpus.states.dense = st.dense
            if cfg.model.train_codec:  # codec-aware: the model learns from what an index will return
                corpus.states = round_trip(corpus.states, cfg.model.train_codec)
            self._say(f"{corpus.name}: {len(corpus.doc_ids)} documents ready ({time.time() - t0:.0f}s)")

        data = build_training_set(cfg, model, (dense_model, tower), attach, cache_root=self.cache / "teacher")
        self._say(data.summary())
        return model, data

    # -- batches --
    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch: int, n: int) -> np.ndarray:
        return np.random.default_rng(_seed(self.cfg.train.seed, "epoch", epoch)).permutation(n)

    def micro_batch(self, data: TrainingSet, step: int, micro: int) -> list[Example]:
        o, n = self.cfg.train, len(data.train)
        start = (step * o.grad_accum + micro) * o.batch_queries
        return [data.train[self._perm(i // n, n)[i % n]] for i in range(start, start + o.batch_queries)]

    def scores(self, model: MiceModel, data: TrainingSet, batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Student scores [B, Lmax] and validity mask for a batch of examples."""
        L = max(len(e.rows) for e in batch)
        frozen = self.cfg.model.freeze_bottom
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            q, q_mask = model.encode_queries([e.query for e in batch])
        pairs = [(e.corpus, e.rows[min(j, len(e.rows) - 1)]) for e in batch for j in range(L)]
        if frozen:
            states = [data.corpora[c].states.tensors([r])[0] for c, r in pairs]
            cut = self._cloze(data, batch, L) if model.training else {}  # ICT positives, re-encoded
            for i, st in zip(cut, self._bottom_states(model, list(cut.values()))):
                states[i] = st
            docs, d_mask = pad_states(states)
        else:
            ids, d_mask = model.tokenize([data.corpora[c].texts[r] for c, r in pairs], model.config.max_doc_length)
            docs = model.encode_document_batch(ids, d_mask)
        s = model.interaction(q.repeat_interleave(L, 0), q_mask.repeat_interleave(L, 0), docs, d_mask)
        mask = torch.tensor([[j < len(e.rows) for j in range(L)] for e in batch])
        return s.view(len(batch), L), mask

    def _cloze(self, data: TrainingSet, batch: list[Example], L: int) -> dict[int, str]:
        """{pair index: source document text without the pseudo-query} for the ICT share of `batch`."""
        share = self.cfg.data.ict
        out = {}
        for b, e in enumerate(batch):
            if share <= 0 or e.kind not in ("title", "sentence", "span") or e.rows[0] not in e.relevant:
                continue
            if _seed(self.cfg.train.seed, "ict", e.query) % 10_000 >= share * 10_000:
                continue
            text = " ".join(data.corpora[e.corpus].texts[e.rows[0]].split())
            query = " ".join(e.query.split())
            at = text.find(query)
            rest = " ".join((text[:at] + text[at + len(query):]).split()) if at >= 0 else ""
            if len(rest.split()) >= 3:
                out[b * L] = rest
        return out

    @staticmethod
    def _bottom_states(model: MiceModel, texts: list[str]) -> list[torch.Tensor]:
        """Layer-ℓ* states [T_i,D] of documents, as the (frozen, eval-mode) bottom stores them; one
        padded pass for all of them."""
        if not texts:
            return []
        was = model.bottom.training
        model.bottom.eval()
        with torch.no_grad():
            ids, mask = model.tokenize(texts, model.config.max_doc_length)
            states = model.encode_document_batch(ids, mask).float()
        model.bottom.train(was)
        return [s[: int(n)] for s, n in zip(states, mask.sum(1))]

    def teacher_scores(self, batch: list[Example]) -> torch.Tensor:
        L = max(len(e.rows) for e in batch)
        return torch.tensor([[e.teacher[min(j, len(e.rows) - 1)] for j in range(L)] for e in batch], dtype=torch.float32)

    # -- validation --
    @torch.inference_mode()
    def validate(self, model: MiceModel, data: TrainingSet, batch: int = 8) -> dict:
        if not data.dev:
            return {}
        was = model.training
        model.eval()
        ndcg, teacher_ndcg, agree, n_rel = 0.0, 0.0, [], 0
        for i in range(0, len(data.dev), batch):
            chunk = data.dev[i : i + batch]
            s, mask = self.scores(model, data, chunk)
            for e, row in zip(chunk, s.float().numpy()):
                row = row[: len(e.rows)]
                order = np.argsort(-row, kind="stable")
                if e.relevant:
                    n_rel += 1
                    ndcg += ndcg_at([e.rows[j] for j in order], e.relevant)
                    teacher_ndcg += ndcg_at(list(e.rows), e.relevant)
                t = np.asarray(e.teacher)
                dt, ds = t[:, None] - t[None, :], row[:, None] - row[None, :]
                decided = dt != 0
                agree.append(float(((np.sign(dt) == np.sign(ds)) & decided).sum() / max(decided.sum(), 1)))
        model.train(was)
        out = {"pair_agreement": float(np.mean(agree))}
        if n_rel:
            out |= {"nDCG@10": ndcg / n_rel, "teacher_nDCG@10": teacher_ndcg / n_rel}
        return out

    # -- optimisation --
    def _optimizer(self, model: MiceModel) -> torch.optim.AdamW:
        o = self.cfg.train
        frozen = self.cfg.model.freeze_bottom
        for p in model.bottom.parameters():
            p.requires_grad_(not frozen)
        named = list(model.interaction.named_parameters())
        head = [p for n, p in named if n.startswith(("head.", "pooler."))]
        late = [p for n, p in named if n.startswith("late.")]
        body = [p for n, p in named if not n.startswith(("head.", "pooler.", "late."))]
        if not frozen:
            body += list(model.bottom.parameters())
        late_lr = o.lr if o.late_lr is None else o.late_lr
        groups = [{"params": body, "lr": o.lr, "base_lr": o.lr},
                  {"params": head, "lr": o.head_lr, "base_lr": o.head_lr}]
        if late:  # MaxSim's identity projection and unit weights are not pulled towards zero
            groups.append({"params": late, "lr": late_lr, "base_lr": late_lr, "weight_decay": 0.0})
        return torch.optim.AdamW(groups, weight_decay=o.weight_decay)

    def _lr_factor(self, step: int) -> float:
        o = self.cfg.train
        if step < o.warmup:
            return (step + 1) / o.warmup
        return max(0.0, (o.steps - step) / max(1, o.steps - o.warmup))

    def _config_key(self) -> str:
        d = self.cfg.to_dict()
        for k in ("checkpoint_every", "eval_every", "threads", "steps"):
            d["train"].pop(k)
        d.pop("output"), d.pop("cache_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def save_checkpoint(self, model, opt, step: int, history: list) -> None:
        from safetensors.torch import save_file

        tmp, final = self.out / f"{CKPT}.tmp", self.out / CKPT
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        save_file({n: p.detach().contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))
        index = {id(p): n for n, p in params.items()}
        moments = {}
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state.get(p, {})
                for k, v in st.items():
                    moments[f"{index[id(p)]}::{k}"] = torch.as_tensor(v).detach().clone().contiguous()
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "config_key": self._config_key(),
                                                    "history": history}, indent=1))
        old = self.out / f"{CKPT}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, model, opt) -> tuple[int, list]:
        from safetensors.torch import load_file

        folder = self.out / CKPT
        if not (folder / "state.json").exists():
            return 0, []
        state = json.loads((folder / "state.json").read_text())
        if state["config_key"] != self._config_key():
            raise ResumeError(f"{folder}: checkpoint was made with another training configuration; "
                              "use a new --output folder or delete the checkpoint")
        weights = load_file(str(folder / "trainable.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in weights.items():
                params[n].copy_(v)
        moments = load_file(str(folder / "optimizer.safetensors"))
        for n, p in params.items():
            st = {k.split("::", 1)[1]: v for k, v in moments.items() if k.split("::", 1)[0] == n}
            if st:
                opt.state[p] = st
        return int(state["step"]), list(state["history"])

    # -- the loop --
    def train(self, model: MiceModel | None = None, data: TrainingSet | None = None,
              stop_after: int | None = None) -> TrainResult:
        """Train to `train.steps` (resuming from <output>/checkpoint). `stop_after`: return after
        that many steps of this call (tests use it to simulate a kill)."""
        cfg, o = self.cfg, self.cfg.train
        if model is None or data is None:
            model, data = self.prepare()
        torch.set_num_threads(o.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        model.train()
        opt = self._optimizer(model)
        step, history = self.load_checkpoint(model, opt)
        if step:
            self._say(f"resumed from {self.out / CKPT} at step {step}")
        t0, done, loss_avg = time.time(), 0, None
        bar = self._bar() if self.progress else None
        task = bar.add_task("train", total=o.steps, completed=step, loss=float("nan")) if bar else None
        if step == 0 and data.dev:
            history.append({"step": 0, **self.validate(model, data)})
            self._say(self._fmt(history[-1]))
        try:
            while step < o.steps and (stop_after is None or done < stop_after):
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * self._lr_factor(step)
                total = 0.0
                for micro in range(o.grad_accum):
                    batch = self.micro_batch(data, step, micro)
                    torch.manual_seed(_seed(o.seed, "dropout", step, micro))
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=o.bf16):
                        s, mask = self.scores(model, data, batch)
                    loss = compute_loss(o.loss, s.float(), self.teacher_scores(batch), mask,
                                        cfg.teacher.temperature) / o.grad_accum
                    loss.backward()
                    total += float(loss.detach())
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], o.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step, done = step + 1, done + 1
                loss_avg = total if loss_avg is None else 0.98 * loss_avg + 0.02 * total
                if bar:
                    bar.update(task, completed=step, loss=loss_avg)
                if step % o.eval_every == 0 or step == o.steps:
                    history.append({"step": step, "loss": loss_avg, **self.validate(model, data)})
                    self._say(self._fmt(history[-1]))
                if step % o.checkpoint_every == 0 or step == o.steps:
                    self.save_checkpoint(model, opt, step, history)
        finally:
            if bar:
                bar.stop()
        model.eval()
        model_dir = self.out / "model"
        if step >= o.steps:
            delta = cfg.model.freeze_bottom and bool(model.config.base_model)
            model.save(model_dir, delta=delta)
            if delta:
                drop_tokenizer_files(model_dir)
            if cfg.model.save_dtype == "fp16":
                cast_weights(model_dir / "model.safetensors", torch.float16)
            (self.out / "history.json").write_text(json.dumps(history, indent=1))
        return TrainResult(model_dir, step, time.time() - t0, history[-1] if history else {}, history)

    def _fmt(self, h: dict) -> str:
        return f"step {h['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in h.items() if k != "step")

    def _bar(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("ETA"),
                       TimeRemainingColumn(), console=self.console)
        bar.start()
        return bar


def cast_weights(path: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with floating tensors in `dtype` (loading casts back to fp32)."""
    from safetensors.torch import load_file, save_file

    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(weights, str(path))


def drop_tokenizer_files(folder: Path) -> None:
    """A delta checkpoint loads the base model's tokenizer. The saved copy would carry the
    truncation state left by tokenizer calls, which changes the model fingerprint and so would make
    the stored states of an index built with the backbone look foreign."""
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def train(cfg: TrainConfig, progress: bool = False, console=None) -> TrainResult:
    return Trainer(cfg, progress, console).train()
