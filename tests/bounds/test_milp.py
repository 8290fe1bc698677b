"""The MILP encoding (harness.bounds.milp): affine maps equal the model, the program is the exact network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.bounds import ibp_bounds
from harness.bounds.ibp import UnsupportedLayerError
from harness.bounds.milp import MILPNetwork, build_program, intersect_relu_bounds
from harness.models import Normalize
from harness.threat_model import input_box


def conv_model(seed: int = 0) -> nn.Sequential:
    """Every layer type the models use, BatchNorm with non-trivial statistics, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        Normalize((0.4, 0.5), (0.3, 0.2)),
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 2, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def forward_maps(net: MILPNetwork, x: torch.Tensor) -> np.ndarray:
    """The network as the encoding sees it: affine maps and ReLUs, in float64."""
    v = x.double().reshape(x.shape[0], -1).numpy().T
    for amap in net.hidden:
        v = np.maximum(amap.matrix @ v + amap.bias[:, None], 0.0)
    return (net.final.matrix @ v + net.final.bias[:, None]).T


def test_affine_maps_compose_to_the_model():
    model = conv_model()
    net = MILPNetwork.from_model(model, (2, 6, 6))
    assert [m.matrix.shape for m in net.hidden] == [(108, 72), (16, 108), (6, 16)]
    assert net.final.matrix.shape == (3, 6) and net.num_classes == 3
    x = torch.rand(5, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    assert np.abs(forward_maps(net, x) - ref).max() < 1e-12
    # A convolution's map is sparse: 3x3 kernels over 2 channels, at most 18 inputs per output.
    assert net.hidden[0].matrix.getnnz(axis=1).max() <= 18


def test_program_fixes_stable_relus_and_keeps_the_clean_point_feasible():
    model = conv_model()
    net = MILPNetwork.from_model(model, (2, 6, 6))
    x = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    lo, hi = input_box(x, 0.02)
    with torch.no_grad():
        pre = ibp_bounds(model, lo, hi).preact
    bounds = [(l.double().flatten().numpy(), u.double().flatten().numpy()) for l, u in pre]
    prog = build_program(net, lo.double().flatten().numpy(), hi.double().flatten().numpy(), bounds)
    for (inactive, active, unstable), (l, u) in zip(prog.counts, bounds):
        assert inactive == (u <= 0).sum() and active == (l >= 0).sum() and unstable == l.size - inactive - active
    assert prog.num_binaries == sum(c[2] for c in prog.counts) > 0
    # The clean input with its exact activations (d = 1 where active) satisfies every row.
    cols = np.zeros(prog.matrix.shape[1])
    cols[:prog.n_inputs] = x.double().flatten().numpy()
    v = cols[:prog.n_inputs]
    for k, amap in enumerate(net.hidden):
        z = amap.matrix @ v + amap.bias
        h = np.maximum(z, 0)
        out = prog.out_cols[k]
        l, u = bounds[k]
        cols[out[out >= 0]] = h[out >= 0]
        unstable = np.flatnonzero((u > 0) & (l < 0))  # their z and d columns: nu before and after h's
        hcols = out[unstable]
        zcols, dcols = hcols - unstable.size, hcols + unstable.size
        cols[zcols], cols[dcols] = z[unstable], (z[unstable] > 0)
        v = h
    act = prog.matrix @ cols
    assert np.all(act >= prog.row_lower - 1e-9) and np.all(act <= prog.row_upper + 1e-9)
    assert np.all(cols >= prog.col_lower - 1e-12) and np.all(cols <= prog.col_upper + 1e-12)
    cost, const = prog.margin_objective(net, 0, 2)
    with torch.no_grad():
        z = model.double()(x.double())[0]
    assert abs(cost @ cols + const - float(z[0] - z[2])) < 1e-10


def test_intersect_relu_bounds_takes_the_tighter_side():
    a = [(torch.tensor([-1.0, 0.0]), torch.tensor([2.0, 1.0]))]
    b = [(torch.tensor([-2.0, 0.5]), torch.tensor([1.0, 3.0]))]
    (lo, hi), = intersect_relu_bounds(a, b)
    assert lo.tolist() == [-1.0, 0.5] and hi.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="same ReLUs"):
        intersect_relu_bounds(a, a + a)


def test_rejects_unsupported_layers_training_mode_and_stale_models():
    bad = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match="Tanh"):
        MILPNetwork.from_model(bad, (1, 2, 2))
    pool = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match="MaxPool2d"):
        MILPNetwork.from_model(pool, (1, 2, 2))
    model = conv_model()
    with pytest.raises(ValueError, match="eval"):
        MILPNetwork.from_model(model.train(), (2, 6, 6))
    model.eval()
    with pytest.raises(ValueError, match="in_shape"):
        MILPNetwork.from_model(model, (2, 6, 0))
    with pytest.raises(ValueError, match="does not accept inputs of shape"):
        MILPNetwork.from_model(model, (3, 6, 6))
    net = MILPNetwork.from_model(model, (2, 6, 6))
    net.check_model(model)
    with torch.no_grad():
        model[1].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ValueError, match="rebuild"):
        net.check_model(model)
