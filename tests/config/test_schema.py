"""Bad configs and profiles are refused before anything runs: one line naming the field, nothing written.

Each case goes through the real command line (``harness.cli.main``, in process: forty interpreters
would cost minutes), with a runs folder and a data folder that must stay untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.config.profile import json_schemas, load_profile
from harness.config.settings import BENCHMARKS

REPO = Path(__file__).resolve().parents[2]

RUN = '''dataset = "mnist"
eps = 0.1
method = "ibp"
epochs = 1
train_subset = 64
'''
AD = '''dataset = "mnist"
eps = 0.1
method = "ad_cert"
teacher = "mnist-0.1-pgd-cnn_small-s0-0000000000"
'''
PROFILE = '''[profile]
name = "p"
seeds = [0]

[defaults]
epochs = 1

[methods.ad_cert]
alpha = 0.5

[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["pgd", "ibp", "ad_cert"]
'''


def run_case(text: str) -> str:
    return RUN + text


def profile_case(text: str, base: str = PROFILE) -> str:
    return base + text


# (id, command, file text or None for special files, expected substring of the one-line error)
CASES = [
    # -- run configs: the table of the issue
    ("epochs-str", "train", RUN.replace("epochs = 1", 'epochs = "x"'), "epochs = 'x': input should be a valid integer"),
    ("params-int", "train", run_case("params = 3\n"), "params = 3: input should be a valid dictionary"),
    ("eps-inf", "train", RUN.replace("eps = 0.1", "eps = inf"), "eps = inf: input should be a finite number"),
    ("epochs-float", "train", RUN.replace("epochs = 1", "epochs = 1.5"), "epochs = 1.5: input should be a valid integer"),
    ("epochs-bool", "train", RUN.replace("epochs = 1", "epochs = true"), "epochs = True: input should be a valid integer"),
    ("eps-2", "train", RUN.replace("eps = 0.1", "eps = 2.0"), "eps = 2.0: input should be less than or equal to 1"),
    ("val-size-neg", "train", run_case("val_size = -5\n"), "val_size = -5: input should be greater than or equal to 0"),
    ("subset-neg", "train", RUN.replace("train_subset = 64", "train_subset = -1"),
     "train_subset = -1: input should be greater than or equal to 0"),
    # -- run configs: more types and ranges
    ("eps-nan", "train", RUN.replace("eps = 0.1", "eps = nan"), "eps = nan: input should be a finite number"),
    ("eps-neg", "train", RUN.replace("eps = 0.1", "eps = -0.1"), "eps = -0.1: input should be greater than or equal"),
    ("eps-str", "train", RUN.replace("eps = 0.1", 'eps = "0.1"'), "eps = '0.1': input should be a valid number"),
    ("lr-zero", "train", run_case("lr = 0.0\n"), "lr = 0.0: input should be greater than 0"),
    ("lr-neg", "train", run_case("lr = -1e-3\n"), "lr = -0.001: input should be greater than 0"),
    ("batch-zero", "train", run_case("batch_size = 0\n"), "batch_size = 0: input should be greater than or equal to 1"),
    ("seed-neg", "train", run_case("seed = -1\n"), "seed = -1: input should be greater than or equal to 0"),
    ("width-zero", "train", run_case("width = 0\n"), "width = 0: input should be greater than or equal to 1"),
    ("grad-clip-neg", "train", run_case("grad_clip = -1.0\n"), "grad_clip = -1.0: input should be greater than or"),
    ("train-eps-zero", "train", run_case("train_eps_factor = 0.0\n"), "train_eps_factor = 0.0: input should be greater"),
    ("milestones-order", "train", run_case("lr_milestones = [3, 2]\n"), "lr_milestones must be strictly increasing"),
    ("milestones-str", "train", run_case('lr_milestones = "4"\n'), "lr_milestones = '4': input should be a valid list"),
    ("unknown-key", "train", run_case("epochz = 3\n"), "epochz: unknown key; did you mean 'epochs'?"),
    ("method", "train", RUN.replace('"ibp"', '"sabre"'), "method = 'sabre': input should be 'standard'"),
    ("dataset", "train", RUN.replace('"mnist"', '"imagenet"'), "dataset = 'imagenet': input should be 'mnist'"),
    ("arch", "train", run_case('arch = "resnet"\n'), "arch = 'resnet': input should be 'cnn_small'"),
    ("init", "train", run_case('init = "xavier"\n'), "init = 'xavier': input should be 'default' or 'ibp'"),
    ("schedule", "train", run_case('eps_schedule = "cosine"\n'), "eps_schedule = 'cosine': input should be"),
    ("missing-dataset", "train", RUN.replace('dataset = "mnist"\n', ""), "dataset: required, missing"),
    ("param-range", "train", RUN.replace('"ibp"', '"mtl_ibp"') + "params = { alpha = 1.5 }\n",
     "params.alpha = 1.5: input should be less than or equal to 1"),
    ("param-type", "train", RUN.replace('"ibp"', '"mtl_ibp"') + 'params = { alpha = "0.5" }\n',
     "params.alpha = '0.5': input should be a valid number"),
    ("param-typo", "train", RUN.replace('"ibp"', '"mtl_ibp"') + "params = { alhpa = 0.5 }\n",
     "params.alhpa: unknown key; did you mean 'alpha'?"),
    ("param-steps", "train", RUN.replace('"ibp"', '"pgd"') + "params = { attack_steps = 0 }\n",
     "params.attack_steps = 0: input should be greater than or equal to 1"),
    ("param-choice", "train", AD + 'params = { teacher_input = "noisy" }\n',
     "params.teacher_input = 'noisy': input should be 'clean' or 'adv'"),
    ("no-teacher", "train", AD.replace('teacher = "mnist-0.1-pgd-cnn_small-s0-0000000000"\n', ""),
     "teacher: ad_cert needs a teacher"),
    ("needless-teacher", "train", run_case('teacher = "x"\n'), "ibp does not use a teacher"),
    # -- files
    ("broken-toml", "train", "dataset = \n", "invalid TOML"),
    ("empty", "train", "", "empty file"),
    ("binary", "train", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"),
    ("missing-file", "train", None, "file does not exist"),
    ("directory", "train", "<dir>", "is a directory"),
    ("json-list", "train", "<json>[1, 2]", "expected a table of keys at the top level"),
    # -- profiles
    ("seeds-neg", "reproduce", PROFILE.replace("seeds = [0]", "seeds = [0, -1]"),
     "profile.seeds[1] = -1: input should be greater than or equal to 0"),
    ("seeds-str", "reproduce", PROFILE.replace("seeds = [0]", 'seeds = "x"'),
     "profile.seeds = 'x': input should be a valid list"),
    ("seeds-repeat", "reproduce", PROFILE.replace("seeds = [0]", "seeds = [0, 0]"), "seeds must not repeat"),
    ("setting-param", "check", profile_case('methods_params.ad_cert = { alpha = 1.2 }\n'),
     "settings[0].methods_params.ad_cert.alpha = 1.2: input should be less than or equal to 1"),
    ("setting-param-2", "check", profile_case('\n[[settings]]\ndataset = "mnist"\neps = 0.3\nmethods = ["pgd", "ad_cert"]\n'
                                              'methods_params.ad_cert = { alpha = -0.5 }\n'),
     "settings[1].methods_params.ad_cert.alpha = -0.5"),
    ("sweep-element", "check", PROFILE.replace("alpha = 0.5", "alpha = [0.1, 1.5]"),
     "methods.ad_cert.alpha[1] = 1.5: input should be less than or equal to 1"),
    ("sweep-empty", "check", PROFILE.replace("alpha = 0.5", "alpha = []"),
     "methods.ad_cert.alpha = []: list should have at least 1 item"),
    ("no-settings", "check", PROFILE[:PROFILE.index("[[settings]]")], "settings: required, missing"),
    ("no-methods", "check", PROFILE.replace('methods = ["pgd", "ibp", "ad_cert"]', "methods = []"),
     "settings[0].methods = []: list should have at least 1 item"),
    ("unknown-method", "reproduce", PROFILE.replace('"ibp"', '"no_such_method"'), "settings[0].methods[1] = 'no_such_method'"),
    ("unknown-table", "check", profile_case("\n[certfy]\nn_test = 5\n"), "certfy: unknown key; did you mean 'certify'?"),
    ("certify-zero", "check", profile_case("\n[certify]\nn_test = 0\n"), "certify.n_test = 0: input should be greater"),
    ("certify-float", "check", profile_case("\n[certify]\npgd_steps = 1.5\n"), "certify.pgd_steps = 1.5: input should"),
    ("certify-typo", "check", profile_case("\n[certify]\npgd_step = 5\n"), "certify.pgd_step: unknown key; did you mean"),
    ("setting-certify-negative", "reproduce", profile_case("certify = { complete_samples = -1 }\n"),
     "settings[0].certify.complete_samples = -1: input should be greater than or equal to 0"),
    ("setting-certify-typo", "check", profile_case("certify = { complete_sample = 5 }\n"),
     "settings[0].certify.complete_sample: unknown key; did you mean 'complete_samples'?"),
    ("setting-certify-not-table", "check", profile_case("certify = 5\n"), "settings[0].certify = 5"),
    ("defaults-epochs", "check", PROFILE.replace("epochs = 1", "epochs = 0"), "defaults.epochs = 0: input should be"),
    ("defaults-typo", "check", PROFILE.replace("epochs = 1", "epocs = 1"), "defaults.epocs: unknown key; did you mean"),
    ("eps-zero-den", "check", PROFILE.replace("eps = 0.1", 'eps = "8/0"'), "settings[0].eps = '8/0'"),
    ("eps-fraction-big", "check", PROFILE.replace("eps = 0.1", 'eps = "16/8"'), "16/8 = 2 is outside [0, 1]"),
    ("eps-text", "check", PROFILE.replace("eps = 0.1", 'eps = "abc"'), "settings[0].eps = 'abc'"),
    ("no-teacher-in-setting", "check", PROFILE.replace('"pgd", ', ""), "lists ad_cert but no pgd teacher"),
    ("profile-name", "check", PROFILE.replace('name = "p"', 'name = "bad name!"'), "profile.name = 'bad name!'"),
    ("methods-table", "check", profile_case("\n[methods.no_such_method]\nalpha = 0.5\n"), "methods.no_such_method: unknown key"),
    ("slurm-cpus", "check", profile_case("\n[slurm]\ncpus_per_task = 0\n"), "slurm.cpus_per_task = 0: input should"),
    ("ablation-base", "check", profile_case('\n[[ablations.variants]]\nname = "x"\n'), "ablations.base: required, missing"),
    ("ablation-param", "check", profile_case('\n[ablations]\nbase = { alpha = 0.5 }\n[[ablations.variants]]\n'
                                             'name = "x"\nparams = { variant = "rs" }\n'),
     "ablations.variants[0].params.variant = 'rs': input should be 'ad', 'rslad' or 'natkl'"),
    ("swept-teacher", "check", profile_case("\n[methods.pgd]\nattack_steps = [1, 2]\n"), "pgd parameters are swept"),
    ("profile-dir", "check", "<dir>", "is a directory"),
    ("profile-broken", "reproduce", "[[settings]\n", "invalid TOML"),
]


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("HARNESS_DATA", str(data))  # nothing may be downloaded into it
    return tmp_path


def _write_case(tmp: Path, content) -> Path:
    path = tmp / "case.toml"
    if content is None:
        return tmp / "no-such-file.toml"
    if content == "<dir>":
        path = tmp / "a-folder.toml"
        path.mkdir()
    elif isinstance(content, str) and content.startswith("<json>"):
        path = tmp / "case.json"
        path.write_text(content[len("<json>"):])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, command, content, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_line_naming_the_field(sandbox, capsys, name, command, content, message):
    path = _write_case(sandbox, content)
    runs = sandbox / "runs"
    if command == "train":
        argv = ["train", str(path), "--runs", str(runs), "--device", "cpu"]
    elif command == "reproduce":
        argv = ["reproduce", "--profile", str(path), "--runs", str(runs), "--results", str(sandbox / "results"),
                "--plots", str(sandbox / "plots"), "--device", "cpu"]
    else:
        argv = ["check", str(path), "--runs", str(runs), "--no-estimate"]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert not runs.exists() and not (sandbox / "results").exists() and not (sandbox / "plots").exists()
    assert not any((sandbox / "data").iterdir())


def test_cli_refuses_in_a_real_process_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(RUN.replace("eps = 0.1", "eps = inf"))
    r = subprocess.run([sys.executable, "-m", "harness", "train", str(bad), "--runs", str(tmp_path / "runs")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {bad}: eps = inf: input should be a finite number"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.toml")))
def test_every_profile_under_benchmarks_passes_check(name, capsys):
    assert cli.main(["check", name, "--no-estimate"]) == 0
    out = capsys.readouterr().out
    assert f"a valid profile {load_profile(name).name!r}" in out
    assert out.count(" runs (") == 1


def test_check_prints_a_run_config_and_its_id(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text(RUN)
    assert cli.main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a valid run config; run id mnist-0.1-ibp-cnn_small-s0-" in out


def test_schema_is_printed_as_json_with_both_formats(capsys):
    assert cli.main(["check", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json_schemas()
    profile = schema["profile"]
    assert {"settings", "certify", "defaults", "methods", "slurm", "ablations", "profile"} <= set(profile["properties"])
    assert profile["additionalProperties"] is False
    assert "alpha" in json.dumps(profile)  # the methods' parameters are in it
    assert {"dataset", "eps", "method"} <= set(schema["run_config"]["required"])
