"""harness.runtime.device: TF32 only for training on CUDA, never for certification; CUDA runs of the pipeline."""

from __future__ import annotations

import pytest
import torch

from harness.runtime.device import exact_arithmetic, is_out_of_memory, training_arithmetic


def _flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_arithmetic_contexts_change_nothing_on_the_cpu():
    before = _flags()
    with training_arithmetic(torch.device("cpu")):
        assert _flags() == before
    with exact_arithmetic(torch.device("cpu")):
        assert _flags() == before


def test_out_of_memory_is_recognised_in_both_forms():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 11.58 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.cuda
def test_tf32_is_on_for_training_and_off_for_certification_on_cuda():
    dev = torch.device("cuda")
    before = _flags()
    with training_arithmetic(dev):
        assert _flags() == (True, True) and torch.backends.cudnn.benchmark
    with exact_arithmetic(dev):
        assert _flags() == (False, False)
    assert _flags() == before


@pytest.mark.cuda
def test_certification_on_cuda_agrees_with_the_cpu(tmp_path):
    """Train a tiny run on CUDA, certify it on CUDA and on the CPU: the invariants hold on both, and the
    IBP verdicts agree except within the floating-point band of the soundness rule."""
    import pandas as pd

    from harness.certification.records import check_invariants
    from harness.certification.run import certify_paths, certify_run
    from harness.config.settings import CertifySettings, RunConfig
    from harness.rundir import RunDir
    from harness.training.loop import train

    cfg = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "mtl_ibp", "epochs": 1, "batch_size": 64,
                               "train_subset": 512, "val_size": 100, "val_pgd_steps": 2, "init": "ibp",
                               "params": {"alpha": 0.5}})
    run = train(cfg, device="cuda", runs_root=tmp_path / "cuda", log=lambda *_: None)
    assert run.read_manifest()["device"].startswith("cuda")
    settings = CertifySettings(n_test=300, crown_samples=8, alpha_crown_samples=4, pgd_steps=10, pgd_restarts=1,
                               batch_size=100, crown_batch_size=4, alpha_iterations=5)
    gpu = certify_run(run, settings, device="cuda", log=lambda *_: None)
    check_invariants(gpu)
    cpu_run = RunDir(tmp_path / "cpu" / run.path.name)
    import shutil

    shutil.copytree(run.path, cpu_run.path)
    certify_paths(cpu_run, settings)[0].unlink()
    cpu = certify_run(cpu_run, settings, device="cpu", log=lambda *_: None)
    same = (gpu["cert_ibp"] == cpu["cert_ibp"]).mean()
    assert same >= 0.99, same
    assert (gpu["clean_pred"] == cpu["clean_pred"]).mean() >= 0.99
    pd.testing.assert_series_equal(gpu["label"], cpu["label"])
