"""The documentation is true: README.md and docs/*.md.

Their Python examples run; the make targets they name exist; their ``python -m harness`` commands
are known subcommands with known options; their links point to files that exist; the README's map of
the code matches the folders; and every generated table shows exactly what its generator makes from
the committed CSV, wherever it lives.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
#: Every documentation file, by path relative to the repository: the README, then docs/*.md.
DOCS = {"README.md": README} | {f"docs/{p.name}": p.read_text() for p in sorted((REPO / "docs").glob("*.md"))}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_docs_folder_holds_the_topics():
    assert len(DOCS) > 1, "docs/*.md missing"
    assert README.count("\n") <= 220, "the README is the front door: keep it short, move details to docs/"
    for rel in DOCS:
        if rel != "README.md":
            assert f"]({rel})" in README, f"the README does not link {rel}"


def test_lirpa_snippet_runs_and_shows_alpha_crown_tighter():
    blocks = [(rel, b) for rel, text in DOCS.items()
              for b in re.findall(r"```bash\n\.venv/bin/python -c \"\n(.*?)\n\"\n```", text, re.S)]
    assert [rel for rel, _ in blocks] == ["docs/auto_lirpa.md"]
    r = run_python(blocks[0][1])
    assert r.returncode == 0, r.stderr
    assert "alpha-CROWN mean" in r.stdout


def test_readme_certify_your_own_model_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)\n```", README, re.S)
    assert len(blocks) == 1
    assert "certify(" in blocks[0] and "margin_lower_bounds(" in blocks[0]
    r = run_python(blocks[0])
    assert r.returncode == 0, r.stderr
    assert re.search(r"^crown: \d+ of 16 certified", r.stdout, re.M), r.stdout


def test_docs_python_blocks_run():
    """Any other ```python block in docs/ is an example too, and must run."""
    for rel, text in DOCS.items():
        if rel == "README.md":
            continue
        for block in re.findall(r"```python\n(.*?)\n```", text, re.S):
            r = run_python(block)
            assert r.returncode == 0, f"{rel}: {r.stderr}"


def make_targets(text: str) -> set[str]:
    """``make X`` at the start of a line (code blocks) or of an inline code span, past ``VAR=value``s."""
    return set(re.findall(r"(?:^|`)make (?:[A-Z_]+=\S+ )*([\w-]+)", text, re.M))


def test_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    named = {t: rel for rel, text in DOCS.items() for t in make_targets(text)}
    for target in named.keys() | {"reproduce", "test", "test-quick", "data", "tables", "figures"}:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"make {target} ({named.get(target, 'required')})"


def test_readme_names_the_first_look_and_the_quick_tests():
    assert "make reproduce PROFILE=smoke" in README
    assert "make test-quick" in README
    assert "tests/slurm/start.sh" in README and "slurm-wlm" in README  # make test installs packages as root


def harness_commands(text: str) -> list[tuple[str, str]]:
    """(subcommand, the rest of its line, continuation lines included, comments and code spans cut)."""
    found = []
    for m in re.finditer(r"python -m harness ([a-z][a-z|.]*)((?:[^`\n\\]|\\\n)*)", text):
        rest = m.group(2).replace("\\\n", " ").split("#")[0]
        for cmd in m.group(1).split("|"):
            if cmd != "...":
                found.append((cmd, rest))
    return found


def test_python_commands_are_known_subcommands_with_known_options():
    from harness.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    seen = 0
    for rel, text in DOCS.items():
        for cmd, rest in harness_commands(text):
            assert cmd in choices, f"{rel}: python -m harness {cmd}: unknown subcommand"
            for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
                assert opt in choices[cmd]._option_string_actions, f"{rel}: python -m harness {cmd} {opt}: unknown option"
            seen += 1
    assert seen > 20  # the commands reference and the how-tos are scanned


def test_links_point_to_existing_files():
    for rel, text in DOCS.items():
        base = (REPO / rel).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path = target.split("#")[0]
            if path:
                assert (base / path).exists(), f"{rel}: broken link {target}"


def test_readme_map_matches_the_folders():
    section = README[README.index("## Where things are"):]
    block = re.search(r"```\n(.*?)\n```", section, re.S).group(1)
    top, inner = set(), set()
    for line in block.splitlines():
        name = line.split()[0]
        (inner if line.startswith("  ") else top).add(name)
    for name in top:
        assert (REPO / name.rstrip("/")).exists(), name
    assert "harness/" in top
    present = {p.name + ("/" if p.is_dir() else "") for p in (REPO / "harness").iterdir()
               if p.name not in {"__init__.py", "__main__.py", "__pycache__"}}
    assert inner == present


def committed_csv(rel: str):
    """A CSV as committed (``git show HEAD:...``), so that a local ``make reproduce`` or ``make bench``,
    which rewrites results/, does not make these tests fail; the working copy outside a git checkout."""
    import io

    import pandas as pd

    r = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=REPO, capture_output=True, text=True)
    return pd.read_csv(io.StringIO(r.stdout) if r.returncode == 0 else REPO / rel)


def shown_between(begin: str, end: str) -> str:
    """The table between ``begin`` and ``end`` in the one documentation file that shows it."""
    where = [rel for rel, text in DOCS.items() if begin in text]
    assert len(where) == 1, f"{begin!r} shown in {where or 'no file'}"
    text = DOCS[where[0]]
    return text[text.index(begin) + len(begin):text.index(end)].strip() + "\n"


def test_readme_results_table_is_the_committed_summary():
    """The numbers in the README's results table are exactly those of results/cpu/summary_mean.csv."""
    from harness.config.profile import load_profile
    from harness.report.tables import README_BEGIN, README_END, readme_results_table

    want = readme_results_table(committed_csv("results/cpu/summary_mean.csv"), load_profile("cpu"))
    assert want.count("\n") > 10  # the committed results hold the cpu profile's rows
    assert README_BEGIN in README  # the headline table stays on the front door
    assert shown_between(README_BEGIN, README_END) == want


def test_speed_table_is_the_committed_benchmark():
    from harness.bench.train import README_BEGIN, README_END, readme_speed_table

    assert shown_between(README_BEGIN, README_END) == readme_speed_table(committed_csv("results/bench_train.csv"))


@pytest.mark.parametrize("profile, name", [("tradeoff", "paired"), ("tradeoff", "hypervolume"),
                                           ("tradeoff", "ablations"), ("cpu", "paired"), ("cpu", "paired_cc_dist"),
                                           ("distill", "paired_cc_dist"), ("distill", "hypervolume")])
def test_paired_and_tradeoff_tables_are_the_committed_ones(profile, name):
    from harness.report.tradeoff import readme_markers, readme_table

    begin, end = readme_markers(name, profile)
    assert shown_between(begin, end) == readme_table(name, committed_csv(f"results/{profile}/{name}.csv"))


@pytest.mark.parametrize("name", ["comparison", "samples"])
def test_fidelity_tables_are_the_committed_ones(name):
    """The fidelity tables in the docs are exactly the committed results/fidelity/<name>.md."""
    rel = f"results/fidelity/{name}.md"
    r = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=REPO, capture_output=True, text=True)
    text = r.stdout if r.returncode == 0 else (REPO / rel).read_text()
    begin = f"<!-- fidelity {name} table: copied from {rel} -->"
    assert shown_between(begin, f"<!-- end of fidelity {name} table -->") == text.strip() + "\n"


def test_paths_and_names_exist():
    """Every repository path in backticks exists, and every dotted ``harness.x.y`` name resolves."""
    import importlib

    for rel, text in DOCS.items():
        for path in re.findall(r"`((?:harness|tests|benchmarks|results|plots|requirements|docs)/[\w./-]*)`", text):
            if "<" not in path and "*" not in path:
                assert (REPO / path).exists(), f"{rel}: {path} does not exist"
        for name in set(re.findall(r"\bharness(?:\.\w+)+", text)):
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"{rel}: {name} does not resolve"
                obj = getattr(obj, attr)
