"""Pure-NumPy references for tfopt's optimizers, written from their docstrings.

Each is independent of Keras and TensorFlow and spelled as the textbook
equation (``m = beta_1 * m + (1 - beta_1) * g``), not as the increments the
optimizers compute, so that a shared mistake is unlikely.

Calling convention (the same for every reference, so other tests can add
theirs to ``REFERENCES``)::

    trajectory = reference(params, grads, **hyperparameters)

* ``params``: a list of arrays, the variables' initial values.
* ``grads``: a sequence with one entry per step, each a list of arrays (one
  gradient per variable).
* ``hyperparameters``: the optimizer's constructor arguments, same names.
  ``learning_rate`` may be a float or a callable of the 0-based step ``t``
  (what a Keras schedule returns when ``optimizer.iterations == t``).
* Returns a list with one entry per step: the list of variables (float64
  arrays) after that step.

Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Arrays = list[np.ndarray]
Reference = Callable[..., list[Arrays]]


def _rate(learning_rate: float | Callable[[int], float], t: int) -> float:
    return float(learning_rate(t)) if callable(learning_rate) else float(learning_rate)


def _trajectory(
    params: Sequence[Any],
    grads: Sequence[Sequence[Any]],
    step: Callable[[int, np.ndarray, np.ndarray, dict], np.ndarray],
) -> list[Arrays]:
    """Runs ``step(t, theta, g, state) -> theta`` per variable, per step.

    ``state`` is one dict per variable, empty at the start, kept across steps.
    """
    thetas = [np.array(p, dtype=np.float64) for p in params]
    states: list[dict] = [{} for _ in thetas]
    out = []
    for t, step_grads in enumerate(grads):
        thetas = [
            step(t, theta, np.asarray(g, dtype=np.float64), state)
            for theta, g, state in zip(thetas, step_grads, states, strict=True)
        ]
        out.append([theta.copy() for theta in thetas])
    return out


def gradient_descent(params, grads, *, learning_rate=0.01) -> list[Arrays]:
    """θ ← θ − learning_rate · g."""

    def step(t, theta, g, state):
        return theta - _rate(learning_rate, t) * g

    return _trajectory(params, grads, step)


def sgd(params, grads, *, learning_rate=0.01, momentum=0.0, nesterov=False) -> list[Arrays]:
    """u ← momentum·u − lr·g; θ ← θ + u, or θ + momentum·u − lr·g (Nesterov)."""

    def step(t, theta, g, state):
        lr = _rate(learning_rate, t)
        if momentum == 0:
            return theta - lr * g
        u = momentum * state.get("u", np.zeros_like(theta)) - lr * g
        state["u"] = u
        if nesterov:
            return theta + momentum * u - lr * g
        return theta + u

    return _trajectory(params, grads, step)


def dynamic_gradient_descent(
    params, grads, *, learning_rate=0.001, learning_rate_decay=0.99
) -> list[Arrays]:
    """α_t = learning_rate(t) · learning_rate_decay^t; v ← v + g; θ ← θ − α_t · v."""

    def step(t, theta, g, state):
        alpha = _rate(learning_rate, t) * learning_rate_decay**t
        v = state.get("v", np.zeros_like(theta)) + g
        state["v"] = v
        return theta - alpha * v

    return _trajectory(params, grads, step)


def adagrad(
    params, grads, *, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7
) -> list[Arrays]:
    """accumulator ← accumulator + g²; θ ← θ − lr · g / √(accumulator + epsilon)."""

    def step(t, theta, g, state):
        accumulator = state.get("a", np.full_like(theta, initial_accumulator_value)) + g**2
        state["a"] = accumulator
        return theta - _rate(learning_rate, t) * g / np.sqrt(accumulator + epsilon)

    return _trajectory(params, grads, step)


def adam(
    params, grads, *, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False
) -> list[Arrays]:
    """Kingma & Ba with "epsilon hat": α_t = lr·√(1−β₂ᵗ)/(1−β₁ᵗ); θ ← θ − α_t·m/(√v + ε)."""

    def step(t, theta, g, state):
        m = beta_1 * state.get("m", np.zeros_like(theta)) + (1 - beta_1) * g
        v = beta_2 * state.get("v", np.zeros_like(theta)) + (1 - beta_2) * g**2
        state["m"], state["v"] = m, v
        if amsgrad:
            v = np.maximum(state.get("v_hat", np.zeros_like(theta)), v)
            state["v_hat"] = v
        n = t + 1
        alpha = _rate(learning_rate, t) * np.sqrt(1 - beta_2**n) / (1 - beta_1**n)
        return theta - alpha * m / (np.sqrt(v) + epsilon)

    return _trajectory(params, grads, step)


# tfopt.available() name -> reference. Other test modules may add entries.
REFERENCES: dict[str, Reference] = {
    "gradient_descent": gradient_descent,
    "sgd": sgd,
    "dynamic_gradient_descent": dynamic_gradient_descent,
    "adagrad": adagrad,
    "adam": adam,
}


def assert_trajectories_close(actual, expected, rtol=2e-5, atol=1e-6) -> None:
    """Step-by-step, variable-by-variable comparison of two trajectories."""
    for t, (got, want) in enumerate(zip(actual, expected, strict=True)):
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"step {t}, var {i}")
