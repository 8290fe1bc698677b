"""Training runs: every method trains, resume is exact (SIGKILL included), bad input is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.config.constraints import ConfigError
from harness.config.settings import RunConfig
from harness.rundir import RunDir, load_checkpoint, load_model
from harness.training.loop import TrainingError, train
from harness.training.methods import METHODS

REPO = Path(__file__).resolve().parents[2]

TINY = {"dataset": "mnist", "eps": 0.1, "arch": "cnn_small", "epochs": 2, "batch_size": 64,
        "train_subset": 256, "val_size": 100, "val_pgd_steps": 2, "eps_ramp_length": 1.0}


def tiny(method: str = "standard", **kw) -> RunConfig:
    return RunConfig.from_dict({**TINY, "method": method, **kw})


def quiet(*_a, **_k) -> None:
    pass


def weights(run: RunDir) -> dict[str, torch.Tensor]:
    return load_model(run).state_dict()


def same_weights(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), atol=tol, rtol=0) for k in a)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, RunConfig]:
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny("pgd", params={"attack_steps": 1})
    train(cfg, device="cpu", runs_root=root, log=quiet)
    return root, cfg


def test_every_method_trains_and_writes_its_run_directory(teacher):
    root, tcfg = teacher
    for name in METHODS:
        if name == "pgd":
            continue
        extra = {"teacher": tcfg.run_id} if METHODS[name].needs_teacher else {}
        cfg = tiny(name, epochs=1, **extra)
        run = train(cfg, device="cpu", runs_root=root, log=quiet)
        assert run.finished
        metrics = run.read_metrics()
        assert [m["epoch"] for m in metrics] == [1]
        for key in ("loss", "train_acc", "val_clean", "val_pgd", "val_ibp_cert", "eps", "lr", "epoch_time_s"):
            assert key in metrics[0], key
        assert 0 <= metrics[0]["val_ibp_cert"] <= metrics[0]["val_pgd"] <= metrics[0]["val_clean"] <= 100
        manifest = run.read_manifest()
        for key in ("versions", "git_commit", "device", "seed", "started", "finished", "train_time_s"):
            assert key in manifest, key
        assert manifest["versions"]["torch"] == torch.__version__
        if METHODS[name].needs_teacher:
            assert manifest["teacher"] == tcfg.run_id
            assert manifest["teacher_train_time_s"] > 0
        assert json.loads(run.config.read_text())["method"] == name


def test_training_learns_something():
    # One real epoch of 4096 MNIST images must beat chance by far: guards a loop that does not train.
    cfg = RunConfig.from_dict({**TINY, "method": "standard", "train_subset": 4096, "epochs": 1, "val_size": 500})
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        run = train(cfg, device="cpu", runs_root=Path(d), log=quiet)
        assert run.read_metrics()[-1]["val_clean"] > 80


def test_finished_run_is_not_trained_again(teacher):
    root, cfg = teacher
    before = RunDir.of(cfg, root).checkpoint.stat().st_mtime_ns
    train(cfg, device="cpu", runs_root=root, log=quiet)
    assert RunDir.of(cfg, root).checkpoint.stat().st_mtime_ns == before


def _write_cfg(path: Path, cfg: RunConfig) -> Path:
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    cfg = tiny("pgd", epochs=3, train_subset=1536, params={"attack_steps": 3})
    ref = train(cfg, device="cpu", runs_root=tmp_path / "ref", log=quiet)

    killed_root = tmp_path / "killed"
    cfg_file = _write_cfg(tmp_path / "cfg.json", cfg)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "train", str(cfg_file), "--runs", str(killed_root),
                             "--device", "cpu"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = RunDir.of(cfg, killed_root).metrics
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = RunDir.of(cfg, killed_root)
    assert not run.finished
    logs: list[str] = []
    train(cfg, device="cpu", runs_root=killed_root, log=logs.append)
    assert any("resuming after epoch" in line for line in logs)
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3]
    assert same_weights(weights(ref), weights(run))


def test_corrupted_checkpoint_is_set_aside_and_training_falls_back(tmp_path):
    cfg = tiny("standard", epochs=2)
    ref = train(cfg, device="cpu", runs_root=tmp_path / "ref", log=quiet)
    run = train(cfg, device="cpu", runs_root=tmp_path / "b", log=quiet)
    # simulate a crash after the last checkpoint was written but damaged on disk
    data = run.checkpoint.read_bytes()
    run.checkpoint.write_bytes(data[: len(data) // 2])
    manifest = run.read_manifest()
    manifest["status"] = "running"
    run.manifest.write_text(json.dumps(manifest))
    logs: list[str] = []
    train(cfg, device="cpu", runs_root=tmp_path / "b", log=logs.append)
    assert any("unusable" in line and "checkpoint.pt" in line for line in logs)
    assert any("resuming after epoch 1" in line for line in logs)
    assert list(run.path.glob("checkpoint.pt.corrupt-*"))
    assert same_weights(weights(ref), weights(run))


def test_bit_flip_in_checkpoint_is_detected(tmp_path):
    cfg = tiny("standard", epochs=1)
    run = train(cfg, device="cpu", runs_root=tmp_path, log=quiet)
    data = bytearray(run.checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    run.checkpoint.write_bytes(bytes(data))
    assert load_checkpoint(run, log=quiet) is None
    with pytest.raises(FileNotFoundError, match="no usable checkpoint"):
        load_model(run)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny("standard", epochs=2)
    calls = {"n": 0}
    original = METHODS["standard"].__call__

    def poisoned(self, b):
        calls["n"] += 1
        out = original(self, b)
        if calls["n"] > 4:  # 4 steps per epoch: epoch 2 goes bad
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(METHODS["standard"], "__call__", poisoned)
    with pytest.raises(TrainingError, match="nan"):
        train(cfg, device="cpu", runs_root=tmp_path, log=quiet)
    run = RunDir.of(cfg, tmp_path)
    assert not run.finished
    assert load_checkpoint(run, log=quiet)["epoch"] == 1


@pytest.mark.parametrize("change, message", [
    ({"method": "nope"}, "method = 'nope': input should be 'standard', 'pgd'"),
    ({"dataset": "imagenet"}, "dataset = 'imagenet': input should be 'mnist'"),
    ({"arch": "resnet"}, "arch = 'resnet': input should be 'cnn_small'"),
    ({"eps": -0.1}, "eps = -0.1: input should be greater than or equal to 0"),
    ({"method": "mtl_ibp", "params": {"alpha": 1.5}}, "params.alpha = 1.5: input should be less than or equal to 1"),
    ({"method": "ad_cert", "params": {"alpha": -0.1}, "teacher": "x"}, "params.alpha = -0.1: input should be"),
    ({"method": "ad_cert"}, "needs a teacher"),
    ({"method": "pgd", "params": {"attack_stepz": 3}}, "params.attack_stepz: unknown key; did you mean 'attack_steps'"),
])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        cfg = RunConfig.from_dict({**TINY, "method": "standard", **change})
        train(cfg, device="cpu", runs_root=tmp_path, log=quiet)
    assert message in str(e.value)
    assert not any(tmp_path.iterdir())


def test_teacher_missing_or_mismatched_is_refused(tmp_path, teacher):
    root, tcfg = teacher
    with pytest.raises(ConfigError, match="does not exist"):
        train(tiny("ad_cert", teacher="no-such-run"), device="cpu", runs_root=tmp_path, log=quiet)
    assert not any(tmp_path.iterdir())
    before = set(root.iterdir())
    with pytest.raises(ConfigError, match="eps=0.1.*eps=0.2|eps"):
        train(tiny("ad_cert", eps=0.2, teacher=tcfg.run_id), device="cpu", runs_root=root, log=quiet)
    assert set(root.iterdir()) == before


def test_cli_bad_input_exits_non_zero_with_a_clear_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "method": "sabre"}))
    r = subprocess.run([sys.executable, "-m", "harness", "train", str(bad), "--runs", str(tmp_path / "runs")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
    assert "method = 'sabre'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_device_auto_resolves_and_unknown_device_is_refused():
    from harness.runtime.device import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


def test_paired_runs_share_initialisation_and_batch_order(teacher, tmp_path):
    """Same seed, different methods: with the adversarial term weighted 0, IBP, MTL-IBP and AD-CERT
    minimise the same loss, so they end with the same weights only if they started from the same
    initialisation and saw the same batches in the same order (the paired design of the sweeps)."""
    root, tcfg = teacher
    runs = {
        "ibp": tiny("ibp", epochs=1),
        "mtl_ibp": tiny("mtl_ibp", epochs=1, params={"alpha": 1.0}),
        "ad_cert": tiny("ad_cert", epochs=1, params={"alpha": 1.0}, teacher=tcfg.run_id),
    }
    w = {name: weights(train(cfg, device="cpu", runs_root=root, log=quiet)) for name, cfg in runs.items()}
    assert same_weights(w["ibp"], w["mtl_ibp"], tol=0) and same_weights(w["ibp"], w["ad_cert"], tol=0)
    other_seed = weights(train(tiny("ibp", epochs=1, seed=1), device="cpu", runs_root=root, log=quiet))
    assert not same_weights(w["ibp"], other_seed, tol=1e-3)  # the check can fail
