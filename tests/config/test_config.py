"""Profiles resolve into typed, validated runs with stable ids; sweeps and ablations expand into runs."""

import json
import shutil
from pathlib import Path

import pytest

from harness.config.constraints import ConfigError
from harness.config.profile import load_any, load_profile
from harness.config.settings import BENCHMARKS, RunConfig

DATA = Path(__file__).resolve().parents[1] / "data"


def test_run_id_is_stable_readable_and_changes_with_the_config():
    a = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "ibp", "eps_ramp_start": 0})
    b = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "ibp", "eps_ramp_start": 0.0})
    c = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "ibp", "seed": 1})
    assert a.run_id == b.run_id and a.run_id != c.run_id
    assert a.run_id.startswith("mnist-0.1-ibp-cnn_small-s0-")
    assert a.params["robust_weight"] == 1.0  # defaults are recorded, so the id pins them
    d = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "mtl_ibp", "params": {"alpha": 1}})
    e = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "mtl_ibp", "params": {"alpha": 1.0}})
    assert d.run_id == e.run_id and isinstance(d.params["alpha"], float)


@pytest.mark.parametrize("name", ["smoke", "cpu", "paper"])
def test_profiles_resolve_to_the_run_ids_of_before_the_schema(name):
    """Run folders made before the configuration schema stay valid (ids recorded at commit c5e7dfc): every
    run of then has the same id and order now; methods added since (CC-DIST, SABR, CROWN-IBP) only add runs."""
    before = json.loads((DATA / "run_ids_c5e7dfc.json").read_text())[name]
    now = [r.run_id for r in load_profile(name).runs()]
    assert [i for i in now if i in set(before)] == before


@pytest.mark.parametrize("name", ["smoke", "cpu", "paper"])
def test_profiles_load_and_put_teachers_before_students(name):
    runs = load_profile(name).runs()
    seen = set()
    for r in runs:
        if r.method in ("ad_cert", "cc_dist"):
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
    bad.write_text('[[settings]]\ndataset = "mnist"\neps = 0.1\nmethods = ["ibp"]\nepochz = 3\n')
    with pytest.raises(ConfigError, match=r"settings\[0\].epochz: unknown key; did you mean 'epochs'"):
        load_profile(bad)


SWEEP = '''[profile]
name = "sweep"
seeds = [0, 1]

[methods.mtl_ibp]
alpha = [0.2, 0.5]

[methods.ad_cert]
alpha = [0.2, 0.5]

[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["pgd", "ibp", "mtl_ibp", "ad_cert"]
methods_params.ibp = { robust_weight = [0.5, 1.0] }
'''


def test_a_list_valued_parameter_expands_into_one_run_per_value_and_seed(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    plan = load_profile(path).plan()
    by_method: dict[str, list] = {}
    for p in plan:
        by_method.setdefault(p.cfg.method, []).append(p)
    assert len(by_method["pgd"]) == 2 and len(by_method["ibp"]) == 4
    assert sorted((p.cfg.seed, p.cfg.params["alpha"]) for p in by_method["ad_cert"]) == \
        [(0, 0.2), (0, 0.5), (1, 0.2), (1, 0.5)]
    assert {p.variant for p in by_method["mtl_ibp"]} == {"alpha=0.2", "alpha=0.5"}
    # one teacher per (setting, seed), shared by every swept student of that seed
    teachers = {p.cfg.seed: p.run_id for p in by_method["pgd"]}
    assert all(p.cfg.teacher == teachers[p.cfg.seed] for p in by_method["ad_cert"])
    assert len({p.run_id for p in plan}) == len(plan) == 2 + 4 + 4 + 4


def test_a_scalar_value_gives_the_same_run_as_a_one_element_list(tmp_path):
    one = tmp_path / "one.toml"
    one.write_text(SWEEP.replace("alpha = [0.2, 0.5]", "alpha = 0.5"))
    lst = tmp_path / "lst.toml"
    lst.write_text(SWEEP.replace("alpha = [0.2, 0.5]", "alpha = [0.5]"))
    assert [p.run_id for p in load_profile(one).plan()] == [p.run_id for p in load_profile(lst).plan()]


def test_ablations_run_at_the_base_alpha_with_their_own_teachers(tmp_path):
    path = tmp_path / "abl.toml"
    path.write_text(SWEEP + '''
[ablations]
base = { alpha = 0.5 }

[[ablations.variants]]
name = "teacher input adv"
params = { teacher_input = "adv" }

[[ablations.variants]]
name = "teacher 2 eps"
teacher = { train_eps_factor = 2.0 }
''')
    plan = load_profile(path).plan()
    abl = [p for p in plan if p.ablation]
    assert sorted({p.ablation for p in abl}) == ["teacher 2 eps", "teacher input adv"]
    assert all(p.cfg.params["alpha"] == 0.5 for p in abl) and len(abl) == 4
    strong = [p for p in plan if p.teacher_of == "ablation teacher 2 eps"]
    assert len(strong) == 2 and all(p.cfg.method == "pgd" and p.cfg.train_eps == 0.2 for p in strong)
    for p in abl:
        if p.ablation == "teacher 2 eps":
            assert p.cfg.teacher in {s.run_id for s in strong}
        assert [q.run_id for q in plan].index(p.cfg.teacher) < [q.run_id for q in plan].index(p.run_id)


def test_ablations_can_run_with_a_subset_of_the_seeds(tmp_path):
    abl = SWEEP + '''
[ablations]
base = { alpha = 0.5 }
seeds = [1]

[[ablations.variants]]
name = "teacher input adv"
params = { teacher_input = "adv" }
'''
    path = tmp_path / "abl.toml"
    path.write_text(abl)
    plan = load_profile(path).plan()
    assert [p.cfg.seed for p in plan if p.ablation] == [1]
    # the sweep's runs are the same with or without the ablations
    plain = tmp_path / "plain.toml"
    plain.write_text(SWEEP)
    assert {p.run_id for p in load_profile(plain).plan()} <= {p.run_id for p in plan}
    path.write_text(abl.replace("seeds = [1]", "seeds = [7]"))
    with pytest.raises(ConfigError, match=r"ablations.seeds: \[7\] not among the profile's seeds"):
        load_profile(path)


def test_a_profile_anywhere_loads_and_is_told_from_a_run_config(tmp_path):
    copy = tmp_path / "elsewhere" / "p.toml"
    copy.parent.mkdir()
    shutil.copy(BENCHMARKS / "smoke.toml", copy)
    kind, profile = load_any(copy)
    assert kind == "profile" and profile.name == "smoke" and profile.path == copy.resolve()
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"dataset": "mnist", "eps": 0.1, "method": "standard"}))
    kind, cfg = load_any(run)
    assert kind == "run config" and cfg.method == "standard"
    neither = tmp_path / "neither.toml"
    neither.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="neither a profile"):
        load_any(neither)


SETTING_CERTIFY = '''[profile]
name = "per-setting"
seeds = [0]

[defaults]
epochs = 1

[certify]
n_test = 200
complete_samples = 60
autoattack_samples = 10

[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["pgd", "ibp", "ad_cert"]

[[settings]]
dataset = "mnist"
eps = 0.3
methods = ["pgd", "ibp", "ad_cert"]
certify = { complete_samples = 0, n_test = 100 }
'''


def test_a_setting_may_set_its_own_certification_values_over_the_profiles(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(SETTING_CERTIFY)
    profile = load_profile(path)
    first, second = profile.settings
    assert profile.certify_for(first) == profile.certify  # nothing of its own: [certify] as it is
    own = profile.certify_for(second)
    assert (own.complete_samples, own.n_test, own.autoattack_samples) == (0, 100, 10)  # the rest from [certify]
    for p in profile.plan():
        expected = own if p.cfg.eps == 0.3 else profile.certify
        assert profile.certify_for(p) == profile.certify_for(p.run_id) == expected
    assert profile.certify_for("mnist-0.1-ibp-not-in-the-plan") == profile.certify
    assert own.key != profile.certify.key  # its records go to their own certify-<key> files
    # the runs themselves do not depend on how they are certified
    plain = tmp_path / "plain.toml"
    plain.write_text(SETTING_CERTIFY.replace("certify = { complete_samples = 0, n_test = 100 }\n", ""))
    assert [p.run_id for p in load_profile(plain).plan()] == [p.run_id for p in profile.plan()]
