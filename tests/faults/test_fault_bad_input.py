"""Bad command-line and profile values the schema cannot see: one line naming the problem and the fix, a
non-zero exit, nothing written. Through the real command line (``harness.cli.main``) in this process,
like tests/config/test_schema.py's cases."""

from __future__ import annotations

import pytest

from harness import cli

PROFILE = '''[profile]
name = "p"
seeds = [0]

[defaults]
epochs = 1
train_subset = 64

[certify]
n_test = 100

[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["standard"]
'''
SETTING = '''
[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["standard"]
'''

# (id, extra reproduce options (<file>: a file, <dir>: a folder), profile text, expected part of the line)
CASES = [
    ("workers-0", ["--executor", "local", "--workers", "0"], PROFILE,
     "--workers 0: the local executor needs at least 1"),
    ("workers-neg", ["--executor", "local", "--workers", "-2"], PROFILE, "--workers -2: the local executor needs"),
    ("threads-neg", ["--threads", "-1"], PROFILE, "--threads -1: a run needs at least 1 CPU thread"),
    ("threads-0", ["--threads", "0"], PROFILE, "--threads 0: a run needs at least 1 CPU thread"),
    ("threads-0-local", ["--executor", "local", "--threads", "0"], PROFILE, "--threads 0:"),
    ("runs-file", ["--runs", "<file>"], PROFILE, "is a file, expected a folder"),
    ("results-file", ["--results", "<file>"], PROFILE, "is a file, expected a folder"),
    ("plots-file", ["--plots", "<file>"], PROFILE, "is a file, expected a folder"),
    ("profile-dir", ["--profile", "<dir>"], None, "is a directory, expected a profile file"),
    ("n-test-too-big", [], PROFILE.replace("n_test = 100", "n_test = 20000"),
     "certify.n_test (settings[0], mnist) = 20000 is larger than the mnist test set (10000 images); "
     "set n_test to at most 10000"),
    ("setting-n-test-too-big", [], PROFILE + "certify = { n_test = 10001 }\n",
     "settings[0].certify.n_test = 10001 is larger than the mnist test set (10000 images)"),
    ("setting-repeated", [], PROFILE + SETTING, "settings[1] repeats settings[0] verbatim; remove one of them"),
]


@pytest.mark.parametrize("name, extra, profile, message", CASES, ids=[c[0] for c in CASES])
def test_bad_values_are_refused_in_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, name, extra,
                                                                 profile, message):
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))  # nothing may be fetched either
    (tmp_path / "data").mkdir()
    path = tmp_path / "p.toml"
    if profile is not None:
        path.write_text(profile)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "a-folder").mkdir()
    extra = [{"<file>": str(tmp_path / "a-file"), "<dir>": str(tmp_path / "a-folder")}.get(a, a) for a in extra]
    dirs = {"--runs": tmp_path / "runs", "--results": tmp_path / "results", "--plots": tmp_path / "plots"}
    argv = ["reproduce", "--profile", str(path), "--device", "cpu"]
    for opt, where in dirs.items():
        if opt not in extra:
            argv += [opt, str(where)]
    code = cli.main(argv + extra)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert not any(p.exists() for p in dirs.values())
    assert not any((tmp_path / "data").iterdir()) and not any((tmp_path / "a-folder").iterdir())
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


def test_check_refuses_the_profile_cases_too(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text(PROFILE + SETTING)
    assert cli.main(["check", str(path), "--no-estimate", "--runs", str(tmp_path / "runs")]) != 0
    assert "repeats settings[0] verbatim" in capsys.readouterr().err
