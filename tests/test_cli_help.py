"""`--help` of every command shows every option's default (issue: bracketed help text was eaten
as rich markup, e.g. "--k  Results per query ." lost "[default: 10 ...]")."""

from __future__ import annotations

import re

import pytest
import typer.main
import typer.rich_utils
from typer.testing import CliRunner

from mice_index.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)


def options_help(command: str, monkeypatch) -> dict[str, str]:
    """{option: its help text as rendered} from `mice-index COMMAND --help` at 1000 columns."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)
    out = CliRunner().invoke(app, [command, "--help"], env={"NO_COLOR": "1"})
    assert out.exit_code == 0, out.output
    rows: dict[str, str] = {}
    last = None
    for line in out.output.splitlines():
        cells = line.strip("│ ").strip()
        m = re.match(r"^(?:\*\s+)?(--[\w-]+)(?:,?\s+-\w)?\s+(.*)$", cells)
        if m:
            last = m.group(1)
            rows[last] = m.group(2)
        elif last is not None and cells and not cells.startswith(("╰", "╭")):
            rows[last] += " " + cells  # a wrapped help line
    return rows


def test_every_command_is_checked():
    assert {"build", "search", "serve", "score", "eval", "info", "train", "merge"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_shows_its_default(command, monkeypatch):
    rows = options_help(command, monkeypatch)
    assert rows, f"no options parsed from `{command} --help`"
    missing = [f"{opt}: {text!r}" for opt, text in rows.items()
               if opt != "--help" and "[default: " not in text and "[required]" not in text]
    assert not missing, f"`mice-index {command} --help` shows no default for:\n" + "\n".join(missing)
    eaten = [opt for opt, text in rows.items() if re.search(r"\s\.(\s|$)", text)]  # "per query ." = markup lost
    assert not eaten, f"help text lost a bracketed part (rich markup) in {command}: {eaten}"


def test_search_k_help_keeps_its_bracketed_default(monkeypatch):
    rows = options_help("search", monkeypatch)
    assert "[default: 10 for one query" in rows["--k"]
    assert "[default: the index's model]" in rows["--model"]
    assert "0 = pure MICE [default: the model's recommended alpha]" in rows["--alpha"].replace("  ", " ")


def test_explain_help_states_the_threshold_in_use(monkeypatch):
    from mice_index.explain import MIN_SIMILARITY

    text = " ".join(options_help("search", monkeypatch)["--explain"].split())
    assert f"below a cosine of {MIN_SIMILARITY}" in text and "MaxSim" in text
