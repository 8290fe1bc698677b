"""Architectures, IBP initialisation and the clean-pass BatchNorm convention."""

import math

import pytest
import torch
from torch import nn

from harness.bounds.ibp import ibp_bounds
from harness.models import (
    ARCHITECTURES,
    SUPPORTED_LAYERS,
    batchnorm_affine,
    build_model,
    frozen_batch_stats,
    ibp_init,
    plain_copy,
    split_head,
)

MNIST = ((1, 28, 28), 10, [0.1307], [0.3081])
CIFAR = ((3, 32, 32), 10, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


@pytest.mark.parametrize("arch", ["cnn_small", "cnn7", "mlp"])
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_architectures_map_images_to_logits(arch, shape):
    model = build_model(arch, *shape, width=8 if arch == "cnn7" else None)
    x = torch.rand(3, *shape[0])
    assert model(x).shape == (3, 10)
    assert all(isinstance(m, SUPPORTED_LAYERS) for m in model)


def test_cnn7_is_the_published_layout():
    model = build_model("cnn7", *CIFAR)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1]
    assert all(isinstance(model[i + 1], nn.BatchNorm2d) for i, m in enumerate(model) if isinstance(m, nn.Conv2d))
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [512, 10]
    assert linears[0].in_features == 128 * 16 * 16


def test_normalisation_is_the_first_layer():
    model = build_model("cnn_small", *MNIST).eval()
    x = torch.full((1, 1, 28, 28), 0.1307)
    assert torch.allclose(model[0](x), torch.zeros_like(x), atol=1e-6)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: cnn7, cnn_small, cnn_small_nobn, mlp"):
        build_model("resnet", *MNIST)


def test_ibp_init_draws_from_the_shi_et_al_normal():
    torch.manual_seed(0)
    model = build_model("cnn7", *CIFAR, width=16)
    ibp_init(model)
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers[:-1]:
        fan_in = m.weight[0].numel()
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.1)
        assert (m.bias == 0).all()
    assert layers[-1].weight.std().item() != pytest.approx(math.sqrt(2 * math.pi) / layers[-1].weight[0].numel(),
                                                           rel=0.1)


def test_frozen_batch_stats_reuse_the_clean_statistics():
    torch.manual_seed(0)
    model = build_model("cnn_small", *MNIST).train()
    bn = model[2]
    clean, other = torch.rand(16, 1, 28, 28), torch.rand(16, 1, 28, 28) * 0.2
    with frozen_batch_stats(model):
        model(clean)
        running = bn.running_mean.clone()
        out_other = model(other)  # must use the clean batch's statistics, not its own
        assert torch.equal(bn.running_mean, running)  # running stats updated once (by the clean pass)
        scale, shift = batchnorm_affine(bn)
    h = model[1](model[0](clean))
    mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
    assert torch.allclose(scale, bn.weight / torch.sqrt(var + bn.eps), atol=1e-5)
    assert torch.allclose(shift, bn.bias - mean * scale, atol=1e-5)
    with torch.no_grad():
        ref = model(other)  # plain train mode: the other batch's own statistics
    assert not torch.allclose(out_other, ref, atol=1e-3)
    with pytest.raises(RuntimeError, match="clean-pass statistics"):
        batchnorm_affine(bn)  # outside the block: no frozen statistics


def test_frozen_batch_stats_gradients_reach_batchnorm_through_the_statistics():
    model = build_model("cnn_small", *MNIST).train()
    with frozen_batch_stats(model):
        model(torch.rand(8, 1, 28, 28))
        model(torch.rand(8, 1, 28, 28)).sum().backward()
    assert model[2].weight.grad is not None and model[1].weight.grad.abs().sum() > 0


def test_frozen_statistics_first_used_under_no_grad_keep_their_gradient():
    """Statistics are computed on first use; a first use under no_grad (say, a monitoring pass) must not
    cache a graph-less copy that would silently cut the gradient of a later training pass."""
    x, other = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)

    def grads(peek_first: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("cnn_small", *MNIST).train()
        with frozen_batch_stats(model):
            model(x)
            if peek_first:
                with torch.no_grad():
                    model(other)
            model(other).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for with_peek, plain in zip(grads(True), grads(False)):
        assert torch.allclose(with_peek, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_splits_into_features_and_its_linear_head(arch):
    """The builders' contract: the last layer is the head, so head(features(x)) is the model, with the
    model's own modules (no copy: gradients and BatchNorm statistics are the model's)."""
    torch.manual_seed(0)
    model = build_model(arch, *MNIST, width=4 if arch == "cnn7" else None).eval()
    features, head = split_head(model)
    x = torch.rand(5, *MNIST[0])
    assert torch.equal(head(features(x)), model(x))
    assert isinstance(head, nn.Linear) and head is model[-1]
    assert {id(p) for p in features.parameters()} | {id(p) for p in head.parameters()} == {
        id(p) for p in model.parameters()}
    assert features(x).flatten(1).shape[1] == head.in_features


def test_split_head_refuses_a_model_without_a_linear_head():
    with pytest.raises(ValueError, match="ending with its nn.Linear head"):
        split_head(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU()))
    with pytest.raises(ValueError):
        split_head(nn.Linear(4, 2))


def test_the_ibp_box_of_the_features_contains_every_reachable_feature_vector():
    torch.manual_seed(1)
    model = build_model("cnn_small", *MNIST).eval()
    features, _ = split_head(model)
    x = torch.rand(4, *MNIST[0])
    eps = 0.05
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    box = ibp_bounds(features, lo, hi)
    with torch.no_grad():
        for _ in range(20):
            point = lo + (hi - lo) * torch.rand_like(x)
            h = features(point)
            assert (h >= box.lower - 1e-5).all() and (h <= box.upper + 1e-5).all()
        for corner in (lo, hi):
            h = features(corner)
            assert (h >= box.lower - 1e-5).all() and (h <= box.upper + 1e-5).all()


def test_plain_copy_drops_the_per_batch_state_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = build_model("cnn_small", *MNIST).train()
    x = torch.rand(8, *MNIST[0])
    with frozen_batch_stats(model):
        model(x).sum()
        copy = plain_copy(model)
        assert all("forward" not in m.__dict__ and "_clean_input" not in m.__dict__ for m in copy.modules())
        assert all("forward" in m.__dict__ for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values()))
