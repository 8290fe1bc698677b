"""The AutoAttack benchmark runs end to end and prints one row per (model, eps).

Its figures (seconds per sample, AutoAttack against PGD-50) are measured by
``python -m harness.bench.autoattack``, not asserted here: two training steps make models that
every attack breaks at once, which keeps this test to a few seconds.
"""

import torch

from harness import data
from harness.bench.autoattack import main


def test_bench_autoattack_prints_a_row_per_model_and_eps(capsys):
    data.ensure_dataset("mnist")  # a no-op after `make data`
    threads = torch.get_num_threads()
    main(["--n", "8", "--steps", "2", "--eps", "0.3", "--threads", "1"])
    assert torch.get_num_threads() == threads
    rows = [line for line in capsys.readouterr().out.splitlines() if " eps " in line]
    assert [row.split()[0] for row in rows] == ["standard", "pgd-0.3"]
    assert all("AutoAttack" in row and "s/sample" in row for row in rows)
