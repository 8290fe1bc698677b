"""A published checkpoint certified like a trained run (issue 21), on a slice of the MNIST test set.

Wong & Kolter's MNIST model (benchmarks/checkpoints/kw_mnist.*) and the network Tjeng et al. verified
(mipverify_wk17a.*, another training run, which is what their published numbers are about): each file is
the published one (md5),
it loads strictly into ``cnn_small_nobn``, a profile setting turns it into a finished run folder that
says it was loaded, and the cascade's records on a slice agree with plain forward passes. The LP dual
("lp-dual": same-slope relaxation over the unclipped box) is below every margin an attack reaches (its
soundness against the MILP's exact minima is tested on small models in tests/bounds/test_complete.py)
and looser than CROWN on this model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pandas as pd
import pytest
import torch

from harness.bounds import margin_lower_bounds
from harness.certification.records import sample_verdict
from harness.certification.run import certify_paths
from harness.config.checkpoints import load_checkpoint_spec
from harness.config.constraints import ConfigError
from harness.config.profile import load_profile
from harness.config.settings import CertifySettings, RunConfig
from harness.data import load_split
from harness.orchestration.pipeline import reproduce
from harness.rundir import RunDir, load_model
from harness.training.published import ChecksumError, checkpoint_bytes, published_model

EPS = 0.1


@pytest.fixture(scope="module")
def spec():
    return load_checkpoint_spec("kw_mnist")


@pytest.fixture(scope="module")
def model(spec):
    return published_model(spec)


@pytest.fixture(scope="module")
def mnist():
    x, y = load_split("mnist", "test")
    return x[:200], y[:200]


def test_the_shipped_file_is_the_published_one(spec):
    data = spec.weights_path().read_bytes()
    assert len(data) == 666_692 == spec.size_bytes
    assert hashlib.md5(data).hexdigest() == "cbbfc86b2d1b4146b067efb98e6f86be" == spec.md5
    state = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight", "5.bias", "5.weight", "7.bias", "7.weight"]
    assert spec.repository == "locuslab/convex_adversarial" and spec.licence == "MIT"


def test_a_different_file_is_refused(spec, tmp_path):
    wrong = dataclasses.replace(spec, md5="0" * 32)
    with pytest.raises(ChecksumError, match="md5"):
        checkpoint_bytes(wrong, allow_download=False)
    missing = dataclasses.replace(spec, file="absent.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        checkpoint_bytes(missing, allow_download=False)


def test_the_model_is_cnn_small_without_batchnorm_and_unnormalised(model, spec):
    layers = [type(m).__name__ for m in model]
    assert layers == ["Normalize", "Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    assert float(model[0].mean) == 0.0 and float(model[0].std) == 1.0
    state = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    for theirs, ours in spec.key_map.items():
        assert torch.equal(state[f"{theirs}.weight"], model[int(ours)].weight)


def test_clean_errors_on_the_slice_are_a_plain_forward_count(model, mnist):
    x, y = mnist
    # their architecture rebuilt by hand: the published numbers' network, without our Normalize layer
    state = torch.load(load_checkpoint_spec("kw_mnist").weights_path(), map_location="cpu", weights_only=True)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 4, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 4, 2, 1),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(1568, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    plain.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), plain(x).argmax(1))
        assert int((plain(x).argmax(1) != y).sum()) == 1  # the published model errs on 1 of the first 200


def test_config_validation_goes_through_the_strict_schema():
    base = {"dataset": "mnist", "eps": EPS, "method": "published", "arch": "cnn_small_nobn", "checkpoint": "kw_mnist"}
    cfg = RunConfig.from_dict(base)
    assert cfg.run_id.startswith("mnist-0.1-published-kw_mnist-")
    assert RunConfig.from_dict({**base, "eps": 0.3}).run_id != cfg.run_id  # certified at another eps: another run
    with pytest.raises(ConfigError, match="arch"):
        RunConfig.from_dict({**base, "arch": "cnn_small"})
    with pytest.raises(ConfigError, match="go together"):
        RunConfig.from_dict({**base, "method": "standard"})
    with pytest.raises(ConfigError, match="no absent.toml"):
        RunConfig.from_dict({**base, "checkpoint": "absent"})
    with pytest.raises(ConfigError, match="checkpoint"):
        RunConfig.from_dict({**base, "checkpoint": 3})
    # a trained run's id does not change with the new field
    trained = RunConfig.from_dict({"dataset": "mnist", "eps": EPS, "method": "standard"})
    assert "checkpoint" not in trained.to_dict()
    assert "lp_dual" not in CertifySettings().to_dict()
    plan = load_profile("fidelity").plan()
    assert [p.cfg.checkpoint for p in plan] == ["mipverify_wk17a", "kw_mnist"]
    assert {p.cfg.method for p in plan} == {"published"}


PROFILE = """
[profile]
name = "fidelity-slice"
[certify]
n_test = 20
pgd_steps = 10
pgd_restarts = 1
crown_samples = 0
autoattack_samples = 0
complete_samples = 0
lp_dual = true
[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["published"]
arch = "cnn_small_nobn"
checkpoint = "kw_mnist"
[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["published"]
arch = "cnn_small_nobn"
checkpoint = "mipverify_wk17a"
certify = { lp_dual = false }
"""


def test_a_profile_setting_with_a_checkpoint_is_loaded_certified_and_compared(tmp_path, mnist):
    path = tmp_path / "fidelity-slice.toml"
    path.write_text(PROFILE)
    dirs = {"runs_root": tmp_path / "runs", "results_dir": tmp_path / "results", "plots_dir": tmp_path / "plots"}
    logs: list[str] = []
    assert reproduce(path, device="cpu", threads=1, log=logs.append, **dirs) == 0
    kw, tjeng = (p.cfg for p in load_profile(path).plan())
    run = RunDir.of(kw, dirs["runs_root"])
    manifest = run.read_manifest()
    assert run.finished and manifest["origin"] == "published checkpoint" and manifest["trained"] is False
    assert manifest["checkpoint"]["md5"] == "cbbfc86b2d1b4146b067efb98e6f86be"
    assert json.loads(run.config.read_text())["checkpoint"] == "kw_mnist"
    x, _ = mnist
    df = pd.read_csv(certify_paths(run, load_profile(path).certify)[0])
    with torch.no_grad():
        assert (df["clean_pred"].to_numpy() == load_model(run)(x[:20]).argmax(1).numpy()).all()
    assert df["cert_lp_dual"].notna().all()
    assert not ((df["cert_lp_dual"] == 1) & (df["clean_pred"] != df["label"])).any()
    summary = pd.read_csv(dirs["results_dir"] / "fidelity-slice" / "summary.csv")
    assert list(summary["method"]) == ["published"] * 2 and list(summary["status"]) == ["ok"] * 2
    table = pd.read_csv(dirs["results_dir"] / "fidelity-slice" / "comparison.csv")
    mine = table[table["checkpoint"] == "kw_mnist"]
    clean = mine[mine["quantity"] == "clean error"].iloc[0]
    assert clean["ours_count"] == int((df["clean_pred"] != df["label"]).sum()) and clean["published_pct"] == 1.80
    lp = mine[mine["quantity"] == "LP-dual robust-error bound"].iloc[0]
    assert lp["ours_count"] == int((df["cert_lp_dual"] != 1).sum())
    assert not table["quantity"].str.startswith("MILP verdicts").any()  # no MILP ran, so no row of its verdicts
    # each checkpoint's own published numbers: Tjeng et al.'s beside the network they verified
    theirs = table[table["checkpoint"] == "mipverify_wk17a"]
    assert set(theirs.dropna(subset=["published_pct"])["quantity"]) == {"clean error", "PGD error",
                                                                         "exact robust error (MILP)"}
    # the published single-image verdicts beside ours (247 lies beyond the 20-image slice)
    run2 = RunDir.of(tjeng, dirs["runs_root"])
    df2 = pd.read_csv(certify_paths(run2, load_profile(path).certify_for(load_profile(path).plan()[1]))[0])
    assert "cert_lp_dual" not in df2 or df2["cert_lp_dual"].isna().all()
    samples = pd.read_csv(dirs["results_dir"] / "fidelity-slice" / "samples.csv").set_index("index")
    assert list(samples.index) == [0, 1, 8, 247] and set(samples["checkpoint"]) == {"mipverify_wk17a"}
    assert samples.loc[247, "ours"] == "not measured"
    for i in (0, 1, 8):
        ours, _ = sample_verdict(df2.iloc[i])
        assert samples.loc[i, "ours"] == ours and samples.loc[i, "agree"] == (
            "yes" if ours == samples.loc[i, "published"] else "undecided" if ours == "unknown" else "no")
    # the run folder is not made again: a second reproduce finds everything done
    assert reproduce(path, device="cpu", threads=1, log=logs.append, **dirs) == 0
    assert any("0 to train, 0 to certify" in line for line in logs)


def test_lp_dual_is_sound_and_looser_than_crown(model, mnist):
    x, y = mnist
    # 62: certified by the LP dual with a small margin (0.16); 125: not certified (-0.11), yet robust
    idx = [0, 1, 2, 3, 4, 5, 62, 125]
    xs, ys = x[idx], y[idx]
    lp = margin_lower_bounds(model, xs, ys, EPS, "lp-dual").double()
    crown = margin_lower_bounds(model, xs[-2:], ys[-2:], EPS, "crown").double()
    # Same slopes over the unclipped box against adaptive slopes over the clipped one: CROWN may lose on a
    # single class, but not on a sample's smallest margin or on the sum over classes (here).
    assert (lp[-2:].amin(1) <= crown.amin(1)).all() and (lp[-2:].sum(1) <= crown.sum(1)).all()
    assert lp[-2].amin() > 0 > lp[-1].amin()
    # Against the exact minima of the MILP: on small models in tests/bounds/test_complete.py (a MILP of this
    # model has ~1,700 binaries at any radius, minutes per sample with every class solved to optimality).
    # Here, against real margin values: the margin at every point PGD visits is at least the exact minimum.
    n = len(idx)
    worst = torch.full_like(lp, float("inf"))
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        adv = (xs + EPS * (2 * torch.rand(xs.shape, generator=gen) - 1)).clamp(0, 1).requires_grad_(True)
        for _ in range(20):
            z = model(adv)
            wrong = z.scatter(1, ys[:, None], -1e9).amax(1)
            g, = torch.autograd.grad((z.gather(1, ys[:, None]).squeeze(1) - wrong).sum(), adv)
            with torch.no_grad():
                adv = torch.minimum(torch.maximum(adv - EPS / 8 * g.sign(), xs - EPS), xs + EPS).clamp(0, 1)
                z = model(adv).double()
                m = z.gather(1, ys[:, None]) - z
                keep = torch.ones_like(m, dtype=torch.bool).scatter(1, ys[:, None], False)
                worst = torch.minimum(worst, m[keep].view(n, 9))
            adv.requires_grad_(True)
    assert (lp <= worst + 1e-5).all()
    assert ((worst - lp).amin(1) < 1.0).any()  # close somewhere: the check has teeth


def test_the_network_tjeng_et_al_verified_is_another_training_run():
    """MIPVerify_data's file is not Wong & Kolter's: other weights, and on the whole test set exactly the
    98.11% that MIPVerify.jl's test suite asserts for its rendering of it (ours: 98.20%)."""
    x, y = load_split("mnist", "test")
    errors = {}
    for name in ("kw_mnist", "mipverify_wk17a"):
        net = published_model(load_checkpoint_spec(name)).float().eval()
        with torch.no_grad():
            pred = torch.cat([net(x[i:i + 2000]).argmax(1) for i in range(0, len(x), 2000)])
        errors[name] = int((pred != y).sum())
        if name == "mipverify_wk17a":
            assert int(pred[247]) != int(y[247])  # the image their test suite asserts misclassified
    assert errors == {"kw_mnist": 180, "mipverify_wk17a": 189}
    a, b = (torch.load(load_checkpoint_spec(n).weights_path(), map_location="cpu", weights_only=True)
            for n in ("kw_mnist", "mipverify_wk17a"))
    assert float((a["5.weight"] - b["5.weight"]).abs().max()) > 1.0
    spec = load_checkpoint_spec("mipverify_wk17a")
    data = spec.weights_path().read_bytes()
    assert len(data) == 666_792 == spec.size_bytes
    assert hashlib.md5(data).hexdigest() == "cbb223dbe44f160352ccba619599ad3e" == spec.md5
    assert spec.repository == "vtjeng/MIPVerify_data" and spec.licence == "MIT"


def test_the_images_mipverifys_test_suite_names_get_the_complete_stages_verdicts():
    """MIPVerify.jl's test suite asserts verdicts for four test images of the network Tjeng et al. verified,
    at eps 0.1 (``[[published_samples]]`` in mipverify_wk17a.toml). The complete stage's recipe, with no
    attack before it, proves 0 and 1 robust, and a plain forward pass misclassifies 247. Image 8 (not
    robust) is not here: its program takes the MILP about a minute alone and over two on a busy machine;
    the fidelity profile decides it (a counterexample, results/fidelity/samples.csv)."""
    from harness.bounds.milp import MILPNetwork
    from harness.certification.cascade import decide_sample

    spec = load_checkpoint_spec("mipverify_wk17a")
    model = published_model(spec).float().eval()
    x, y = load_split("mnist", "test")
    published = {s.index: s.verdict for s in spec.published_samples}
    assert published == {0: "robust", 1: "robust", 8: "not robust", 247: "misclassified"}
    with torch.no_grad():
        assert int(model(x[247:248]).argmax(1)) != int(y[247])
    settings = CertifySettings(complete_samples=1, complete_time_limit_s=120.0, complete_tighten_after_s=5.0)
    net = MILPNetwork.from_model(model, tuple(x.shape[1:]))
    cases = {(0, EPS): "verified", (1, EPS): "verified"}
    for (i, eps), expected in cases.items():
        with torch.no_grad():
            assert int(model(x[i:i + 1]).argmax(1)) == int(y[i])
        got = decide_sample(model, net, x[i:i + 1], y[i:i + 1], eps, settings)
        assert got.verdict == expected, (i, eps, got)
