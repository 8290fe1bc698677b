"""Profiles under benchmarks/ resolve into typed, validated runs with stable ids."""

import pytest

from harness.config import ConfigError, RunConfig, load_profile


def test_run_id_is_stable_readable_and_changes_with_the_config():
    a = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "ibp", "eps_ramp_start": 0})
    b = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "ibp", "eps_ramp_start": 0.0})
    c = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "ibp", "seed": 1})
    assert a.run_id == b.run_id and a.run_id != c.run_id
    assert a.run_id.startswith("mnist-0.1-ibp-cnn_small-s0-")
    assert a.params["robust_weight"] == 1.0  # defaults are recorded, so the id pins them


@pytest.mark.parametrize("name", ["smoke", "cpu", "paper"])
def test_profiles_load_and_put_teachers_before_students(name):
    runs = load_profile(name).runs()
    seen = set()
    for r in runs:
        if r.method == "ad_cert":
            assert r.teacher in seen
        seen.add(r.run_id)
    assert {"standard", "pgd", "ibp", "mtl_ibp", "ad_cert"} <= {r.method for r in runs}


def test_paper_profile_has_the_published_settings():
    runs = load_profile("paper").runs()
    by = {(r.dataset, round(r.eps, 5), r.method, r.seed): r for r in runs}
    r = by[("cifar10", round(8 / 255, 5), "mtl_ibp", 2)]
    assert (r.arch, r.epochs, r.eps_ramp_start, r.eps_ramp_length, r.lr_milestones, r.batch_size) == \
        ("cnn7", 240, 1.0, 120.0, (200, 220), 128)
    assert r.params["alpha"] == 0.5
    r = by[("mnist", 0.1, "ibp", 0)]
    assert (r.epochs, r.train_eps, r.batch_size, r.lr, r.grad_clip) == (70, 0.2, 256, 5e-4, 10.0)
    assert by[("cifar10", round(2 / 255, 5), "ad_cert", 0)].params["attack_range"] == 2.1
    assert {r.seed for r in runs} == {0, 1, 2}


def test_profile_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="known: .*smoke"):
        load_profile("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[settings]]\ndataset = "mnist"\neps = 0.1\nmethods = ["ad_cert"]\n')
    with pytest.raises(ConfigError, match="no pgd teacher"):
        load_profile(bad)
    bad.write_text('[[settings]]\ndataset = "mnist"\neps = 0.1\nmethods = ["sabr"]\n')
    with pytest.raises(ConfigError, match="unknown method 'sabr'"):
        load_profile(bad)
    bad.write_text('[[settings]]\ndataset = "mnist"\neps = 0.1\nmethods = ["ibp"]\nepochz = 3\n')
    with pytest.raises(ConfigError, match="unknown run config key.*epochz"):
        load_profile(bad)
