"""AutoAttack on real MNIST models: the original standard version, at least as strong as PGD-50,
every success confirmed by a forward pass, deterministic, the caller's random state untouched."""

import copy
import socket

import pytest
import torch
import torch.nn.functional as F

from harness import data
from harness.attacks import pgd_attack, pgd_robust
from harness.attacks.autoattack import autoattack, configured_autoattack
from harness.models import build_model
from harness.threat_model import in_threat_model

STANDARD_STAGES = ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module's training and attacks.

    The attacks run on batches of a few dozen 28x28 images, where a second thread gains little; on a
    shared 2-core machine under load, OpenMP's waiting threads made two threads 10-30x slower than one
    (fwd+bwd of the small CNN at batch 18: 63 ms against 2 ms). One thread also makes the trained
    models, and so the samples each test sees survive, the same on machines with more cores.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mnist(one_thread):
    data.ensure_dataset("mnist")  # a no-op after `make data`
    return data.load_split("mnist", "train"), data.load_split("mnist", "test")


def _train(mnist, steps: int, eps: float) -> torch.nn.Module:
    """cnn_small trained on real MNIST for ``steps`` batches of 64; PGD-1 with random start where eps > 0."""
    (x, y), _ = mnist
    with torch.random.fork_rng():  # seeded, and the tests' global random state stays as it was
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        model = build_model("cnn_small", (1, 28, 28), 10, [0.1307], [0.3081])
        opt = torch.optim.Adam(model.parameters(), 2e-3)
        for step in range(steps):
            idx = torch.randint(len(x), (64,), generator=g)
            xb, yb = x[idx], y[idx]
            if eps > 0:
                e = eps * min(1.0, 2 * (step + 1) / steps)  # ramp over the first half
                xb = pgd_attack(model, xb, yb, e, steps=1, step_size=1.25 * e)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad()  # no .grad left: the attack must not leave any either
    return model.eval()


@pytest.fixture(scope="module")
def robust_model(mnist):
    return _train(mnist, 150, 0.15)


@pytest.fixture(scope="module")
def standard_model(mnist):
    return _train(mnist, 100, 0.0)


def _test_points(mnist, n):
    _, (x, y) = mnist
    return x[:n], y[:n]


def _assert_confirmed(model, x, y, eps, result):
    """Every reported break is a point of the ball that a plain forward pass misclassifies."""
    broken = ~result.robust
    assert in_threat_model(result.x_adv, x, eps).all()
    with torch.no_grad():
        assert (model.eval()(result.x_adv[broken]).argmax(1) != y[broken]).all()
    assert torch.equal(result.x_adv[result.robust], x[result.robust])
    assert [b is None for b in result.broken_by] == result.robust.tolist()


def test_the_standard_version_is_the_original_one(standard_model):
    adversary = configured_autoattack(standard_model, 0.3, seed=0, device="cpu")
    assert adversary.attacks_to_run == STANDARD_STAGES
    apgd, apgd_t, fab, square = adversary.apgd, adversary.apgd_targeted, adversary.fab, adversary.square
    assert (apgd.norm, apgd.eps, apgd.n_iter, apgd.n_restarts, apgd.thr_decr) == ("Linf", 0.3, 100, 1, 0.75)
    assert (apgd_t.loss, apgd_t.n_target_classes, apgd_t.n_iter, apgd_t.n_restarts) == ("dlr-targeted", 9, 100, 1)
    assert (fab.norm, fab.eps, fab.n_target_classes, fab.n_iter) == ("Linf", 0.3, 9, 100)
    assert (square.norm, square.eps, square.n_queries, square.p_init, square.n_restarts) == ("Linf", 0.3, 5000, 0.8, 1)
    assert not (apgd.verbose or apgd_t.verbose or fab.verbose or square.verbose or adversary.verbose)


def test_at_least_as_strong_as_pgd50_on_a_robust_model(mnist, robust_model):
    x, y = _test_points(mnist, 24)
    eps = 0.22  # PGD leaves about a third robust, and a few samples survive all four stages
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pgd = pgd_robust(robust_model, x, y, eps)  # PGD-50, 3 restarts, margin loss
    assert 0.2 < pgd.float().mean() < 0.9
    rng = torch.get_rng_state()
    log = []
    result = autoattack(robust_model, x, y, eps, seed=0, log=log.append)
    assert torch.equal(torch.get_rng_state(), rng)
    assert int(result.robust.sum()) <= int(pgd.sum())
    _assert_confirmed(robust_model, x, y, eps, result)
    # One log line per stage run: all four ran, so FAB-T and Square were exercised too.
    assert [line.split()[1].rstrip(":") for line in log] == STANDARD_STAGES, \
        f"expected samples to survive until Square; log: {log}"
    # FAB calls backward(): no parameter may have been given a gradient, or lost requires_grad.
    assert all(p.grad is None and p.requires_grad for p in robust_model.parameters())


def test_a_standard_model_is_broken_almost_everywhere_without_network(mnist, standard_model, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("AutoAttack tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    x, y = _test_points(mnist, 64)
    result = autoattack(standard_model, x, y, 0.3, seed=0)
    assert result.robust.float().mean() <= 0.05
    _assert_confirmed(standard_model, x, y, 0.3, result)
    clean_wrong = {i for i, b in enumerate(result.broken_by) if b == "clean"}
    with torch.no_grad():
        assert clean_wrong == set((standard_model(x).argmax(1) != y).nonzero().flatten().tolist())


def test_same_seed_same_result_in_eval_mode_and_the_global_rng_is_left_alone(mnist, standard_model):
    x, y = _test_points(mnist, 16)
    model = standard_model.eval()
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)  # seeds queued for a later CUDA start
    queued = list(tracker.get_calls()) if tracker is not None and not torch.cuda.is_initialized() else None
    rng = torch.get_rng_state()
    first = autoattack(model, x, y, 0.3, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    if queued is not None:
        assert list(tracker.get_calls()) == queued
    torch.rand(3)  # a caller's draws in between change nothing
    # Given in training mode, the model is attacked in eval mode (same result) and handed back in training mode.
    again = autoattack(model.train(), x, y, 0.3, seed=0)
    assert model.training and all(m.training for m in model.modules())
    other = autoattack(model.eval(), x, y, 0.3, seed=1)
    assert torch.equal(first.x_adv, again.x_adv) and torch.equal(first.robust, again.robust)
    assert first.broken_by == again.broken_by
    assert not torch.equal(first.x_adv, other.x_adv)  # the seed does reach the attack's random draws


def test_a_float64_model_and_inputs_off_the_float32_grid(mnist, standard_model):
    x, y = _test_points(mnist, 8)
    model = copy.deepcopy(standard_model).double()
    # The library attacks in float32; x rounded to float32 moves the ball, so its points at the
    # ball's edge land a rounding outside the float64 ball and must be clipped back before the check.
    x = x.double() * (1 - 2e-9) + 1e-9
    assert not torch.equal(x.float().double(), x)
    result = autoattack(model, x, y, 0.3, seed=0)
    assert result.x_adv.dtype == torch.float64
    assert not result.robust.any() and result.rejected == 0
    _assert_confirmed(model, x, y, 0.3, result)


def test_eps_zero_attacks_nothing(mnist, standard_model):
    x, y = _test_points(mnist, 32)
    result = autoattack(standard_model, x, y, 0.0, seed=0)
    with torch.no_grad():
        assert torch.equal(result.robust, standard_model(x).argmax(1) == y)
    assert torch.equal(result.x_adv, x)


class _Softmax(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class _Pair(_Softmax):
    def forward(self, x):
        return self.model(x), x


@pytest.mark.parametrize("case, error", [
    ("eps<0", "eps must be"), ("eps=nan", "eps must be"), ("x>1", r"inputs must lie in \[0, 1\]"),
    ("x<0", r"inputs must lie in \[0, 1\]"), ("softmax", "look like probabilities"), ("tuple", "logits of shape"),
    ("3 classes", "at least 10 classes"), ("labels", "y must be"), ("version", "unknown AutoAttack version"),
    ("seed", "seed must be an int"), ("batch_size", "batch_size must be"), ("flat", "batch of images"),
])
def test_bad_input_is_refused_with_a_clear_error(mnist, standard_model, case, error):
    x, y = _test_points(mnist, 4)
    model, eps, kwargs = standard_model, 0.1, {"seed": 0}
    if case == "eps<0":
        eps = -0.1
    elif case == "eps=nan":
        eps = float("nan")
    elif case == "x>1":
        x = x * 255
    elif case == "x<0":
        x = x - 0.5
    elif case == "softmax":
        model = _Softmax(standard_model)
    elif case == "tuple":
        model = _Pair(standard_model)
    elif case == "3 classes":
        model = torch.nn.Sequential(standard_model, torch.nn.Linear(10, 3))
    elif case == "labels":
        y = y[:2]
    elif case == "version":
        kwargs["version"] = "rand"
    elif case == "seed":
        kwargs["seed"] = None
    elif case == "batch_size":
        kwargs["batch_size"] = 0
    elif case == "flat":
        x = x.flatten(1)
    with pytest.raises((ValueError, TypeError), match=error):
        autoattack(model, x, y, eps, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda(mnist, standard_model):
    x, y = (t.cuda() for t in _test_points(mnist, 32))
    model = copy.deepcopy(standard_model).cuda()
    cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state(x.device)
    first = autoattack(model, x, y, 0.3, seed=0)
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(x.device), gpu)
    again = autoattack(model, x, y, 0.3, seed=0)
    assert first.x_adv.device == x.device and first.robust.device == x.device
    assert torch.equal(first.x_adv, again.x_adv) and torch.equal(first.robust, again.robust)
    assert first.robust.float().mean() <= 0.05
    _assert_confirmed(model, x, y, 0.3, first)
