"""`mice-index train`: distil a teacher into a MICE model (config file + overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from mice_index.cli import app
from mice_index.errors import os_errors


@app.command("train")
def train_command(
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML training config (see configs/) \\[default: the built-in TrainConfig values].")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Output folder (checkpoints, model/) \\[default: the config's].")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="HF encoder / HF cross-encoder / MICE checkpoint \\[default: the config's].")] = None,
    corpus: Annotated[Optional[list[str]], typer.Option("--corpus", help="Corpus (BEIR folder, JSONL/TSV, irds:); repeatable \\[default: the config's].")] = None,
    queries: Annotated[Optional[str], typer.Option("--queries", help="Real training queries (else pseudo-queries) \\[default: the config's (none: pseudo-queries)].")] = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="ensemble (teacher.members, default bm25 + dense; splade, e5 opt-in) | hybrid | cross-encoder | file \\[default: the config's].")] = None,
    teacher_path: Annotated[Optional[str], typer.Option("--teacher-path", help="Cross-encoder or teacher-scores file \\[default: the config's].")] = None,
    teacher_format: Annotated[Optional[str], typer.Option("--teacher-format", help="msmarco-tsv | jsonl \\[default: the config's].")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="marginmse | kl \\[default: the config's].")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps \\[default: the config's].")] = None,
    full: Annotated[bool, typer.Option("--full-finetune", help="Also train the bottom (slow on CPU). \\[default: off]")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Document-state cache folder \\[default: the config's].")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.key=value; repeatable \\[default: none].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar. \\[default: off]")] = False,
) -> None:
    """Train a MICE model by distillation (recipe of the default model: configs/minilm-l6.toml)."""
    from mice_index.train import Trainer, load_config

    from mice_index.text import check_argument

    overrides = [check_argument(v, "--set") for v in set_ or []]
    flags = {"output": output, "cache_dir": cache_dir, "model.init": init, "data.queries": queries,
             "teacher.kind": teacher, "teacher.path": teacher_path, "teacher.format": teacher_format,
             "train.loss": loss, "train.steps": steps}
    overrides += [f"{k}={str(v)!r}" if isinstance(v, (str, Path)) else f"{k}={v}" for k, v in flags.items() if v is not None]
    if corpus:
        overrides.append(f"data.corpora={[str(c) for c in corpus]!r}")
    if full:
        overrides.append("model.freeze_bottom=False")
    cfg = load_config(config, overrides)
    console = Console(stderr=True, emoji=False)
    with os_errors(cfg.output, "writing the training output"):
        result = Trainer(cfg, progress=not quiet, console=console).train()
    console.print(f"model written to [bold]{result.model_dir}[/] after {result.steps} steps "
                  f"({result.seconds / 60:.1f} min); dev: {result.dev}", highlight=False)
