"""The README's commands are true: its Python snippet runs, and the make targets it names exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_lirpa_snippet_runs_and_shows_alpha_crown_tighter():
    blocks = re.findall(r"```bash\n\.venv/bin/python -c \"\n(.*?)\n\"\n```", README, re.S)
    assert len(blocks) == 1
    r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "alpha-CROWN mean" in r.stdout


def test_readme_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in set(re.findall(r"^make (\w+)", README, re.M)) | {"reproduce", "test", "data", "tables", "figures"}:
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_readme_python_commands_are_known_subcommands():
    from harness.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    for cmd in re.findall(r"^python -m harness (\w+)", README, re.M):
        assert cmd in choices, cmd


def committed_csv(rel: str):
    """A CSV as committed (``git show HEAD:...``), so that a local ``make reproduce`` or ``make bench``,
    which rewrites results/, does not make these tests fail; the working copy outside a git checkout."""
    import io

    import pandas as pd

    r = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=REPO, capture_output=True, text=True)
    return pd.read_csv(io.StringIO(r.stdout) if r.returncode == 0 else REPO / rel)


def shown_between(begin: str, end: str) -> str:
    return README[README.index(begin) + len(begin):README.index(end)].strip() + "\n"


def test_readme_results_table_is_the_committed_summary():
    """The numbers in the README's results table are exactly those of results/summary_mean.csv."""
    from harness.config.profile import load_profile
    from harness.report.tables import README_BEGIN, README_END, readme_results_table

    want = readme_results_table(committed_csv("results/cpu/summary_mean.csv"), load_profile("cpu"))
    assert want.count("\n") > 10  # the committed results hold the cpu profile's rows
    assert shown_between(README_BEGIN, README_END) == want


def test_readme_speed_table_is_the_committed_benchmark():
    from harness.bench.train import README_BEGIN, README_END, readme_speed_table

    assert shown_between(README_BEGIN, README_END) == readme_speed_table(committed_csv("results/bench_train.csv"))


@pytest.mark.parametrize("name", ["paired", "hypervolume", "ablations"])
def test_readme_tradeoff_tables_are_the_committed_ones(name):
    from harness.report.tradeoff import readme_markers, readme_table

    begin, end = readme_markers(name)
    assert shown_between(begin, end) == readme_table(name, committed_csv(f"results/tradeoff/{name}.csv"))
