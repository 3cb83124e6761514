"""The main job: the seed example, then multinomial logistic regression fitted by maximum
likelihood on data drawn from a known model, with `linear_cross_entropy_with_grad` (the
model is linear: the loss, dW and db from one fused pass) feeding L-BFGS."""

from __future__ import annotations

import numpy as np

from ._config import show_config
from ._linear import linear_cross_entropy_with_grad
from ._losses import cross_entropy
from ._special import logsumexp, softmax

# The seed document's 6×3 batch and labels.
SEED_LOGITS = np.array(
    [[0.3333] * 3] * 3 + [[0.4333, 0.2333, 0.3333], [0.3333, 0.2333, 0.4333],
                          [0.1333, 0.3333, 0.5333]], dtype=np.float32)
SEED_LABELS = np.array([0, 1, 1, 0, 1, 2])
SEED_SOFT = np.array([[0.3333, 0.6666, 0.0]] * 3 + [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]],
                     dtype=np.float32)
#: What the seed document prints for torch's F.cross_entropy on that batch.
SEED_TORCH = {"hard labels": "1.0686", "empirical soft labels": "1.0685",
              "one-hot labels": "1.0686"}


def seed_example() -> dict[str, float]:
    """The seed example's three losses, computed by mlecore."""
    one_hot = np.eye(3, dtype=np.float32)[SEED_LABELS]
    return {
        "hard labels": float(cross_entropy(SEED_LOGITS, SEED_LABELS)),
        "empirical soft labels": float(cross_entropy(SEED_LOGITS, SEED_SOFT)),
        "one-hot labels": float(cross_entropy(SEED_LOGITS, one_hot)),
    }


def make_data(rng, n_train=20000, n_test=5000, dim=20, classes=5):
    """Features from N(0, I), labels drawn from a softmax model with known parameters."""
    w = rng.normal(0.0, 0.7, (dim, classes))
    b = rng.normal(0.0, 0.5, classes)
    x = rng.normal(size=(n_train + n_test, dim))
    p = softmax(x @ w + b, axis=1)
    u = rng.random((len(x), 1))
    y = np.minimum((p.cumsum(axis=1) < u).sum(axis=1), classes - 1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), (w, b)


def nll_and_accuracy(x, y, w, b):
    z = x @ w + b
    return float(cross_entropy(z, y)), float(np.mean(z.argmax(axis=1) == y))


def fit(x, y, classes, on_step=None, max_iter=200):
    """Maximum likelihood: minimize the mean NLL over (W, b) with L-BFGS (plain gradient
    descent where scipy is absent). Returns W, b and the NLL after each step."""
    dim = x.shape[1]
    # The gradients land in reused buffers: no fresh allocation per evaluation.
    out = (np.empty_like(x), np.empty((classes, dim)), np.empty(classes))

    def objective(theta):
        # θ holds the projection in torch's (classes, dim) layout, then the bias.
        w, b = theta[: dim * classes].reshape(classes, dim), theta[dim * classes:]
        loss, _, dw, db = linear_cross_entropy_with_grad(x, w, y, b, out=out)
        return float(loss), np.concatenate([dw.ravel(), db])

    theta = np.zeros(dim * classes + classes)
    history = []

    def record(t):
        history.append(objective(t)[0])
        if on_step:
            on_step(len(history), history[-1])

    try:
        from scipy.optimize import minimize
    except ImportError:
        minimize = None
    if minimize is not None:
        res = minimize(objective, theta, jac=True, method="L-BFGS-B", callback=record,
                       options={"maxiter": max_iter, "gtol": 1e-8})
        theta = res.x
    else:
        for _ in range(max_iter):
            _, g = objective(theta)
            theta -= 1.0 * g
            record(theta)
    return theta[: dim * classes].reshape(classes, dim).T, theta[dim * classes:], history


def run(seed: int = 0) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        # numpy's generators take integers ≥ 0; checked before the first part prints.
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    show_config()
    print("\n1. The seed example: F.cross_entropy on the 6×3 batch")
    ok = True
    for name, value in seed_example().items():
        match = f"{value:.4f}" == SEED_TORCH[name]
        ok &= match
        print(f"   {name:<22} mlecore {value:.7f}   torch (seed) {SEED_TORCH[name]}   "
              f"{'ok' if match else 'MISMATCH'}")
    print(f"   logsumexp([0, -40]) = {float(logsumexp([0.0, -40.0])):.6g} (full precision)")

    print("\n2. Multinomial logistic regression by maximum likelihood")
    rng = np.random.default_rng(seed)
    (xtr, ytr), (xte, yte), (w_true, b_true) = make_data(rng)
    classes = w_true.shape[1]
    print(f"   data: {len(xtr)} train / {len(xte)} test, {xtr.shape[1]} features, "
          f"{classes} classes, labels drawn from a known softmax model")
    print(f"   start: NLL = log {classes} = {np.log(classes):.6f}")

    def on_step(i, nll):
        if i <= 5 or i % 10 == 0:
            print(f"   step {i:>3}: train NLL {nll:.6f}")

    w, b, history = fit(xtr, ytr, classes, on_step=on_step)
    print(f"   converged after {len(history)} steps: train NLL {history[-1]:.6f}")
    tr_nll, tr_acc = nll_and_accuracy(xtr, ytr, w, b)
    te_nll, te_acc = nll_and_accuracy(xte, yte, w, b)
    true_tr, true_tracc = nll_and_accuracy(xtr, ytr, w_true, b_true)
    true_te, true_teacc = nll_and_accuracy(xte, yte, w_true, b_true)
    print(f"\n   {'':<14}{'train NLL':>11}{'train acc':>11}{'test NLL':>11}{'test acc':>11}")
    print(f"   {'fitted (MLE)':<14}{tr_nll:>11.5f}{tr_acc:>11.4f}{te_nll:>11.5f}{te_acc:>11.4f}")
    print(f"   {'true model':<14}{true_tr:>11.5f}{true_tracc:>11.4f}{true_te:>11.5f}"
          f"{true_teacc:>11.4f}")
    # The MLE fits the training sample at least as well as the true parameters do.
    ok &= tr_nll <= true_tr + 1e-9 and abs(te_nll - true_te) < 0.05
    print("\n   the MLE's train NLL is at or below the true model's, and its test NLL is "
          f"within {abs(te_nll - true_te):.4f} of it" if ok else "\n   UNEXPECTED RESULT")
    return 0 if ok else 1
