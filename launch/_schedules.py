"""Learning-rate schedules for ``--lr_schedule``, built from Keras' own schedules.

Every schedule is a function of the optimizer's step counter, so it behaves the
same on every strategy and resumes correctly from a checkpoint.

* ``constant``: ``learning_rate`` throughout.
* ``cosine``: ``learning_rate * 0.5 * (1 + cos(pi * step / total_steps))``
  (``keras.optimizers.schedules.CosineDecay``; Loshchilov & Hutter, 2017,
  https://arxiv.org/abs/1608.03983, without restarts).
* ``warmup_cosine``: a linear ramp from 0 to ``learning_rate`` over
  ``warmup_steps``, then cosine decay to 0 over the remaining steps (Goyal et
  al., 2017, https://arxiv.org/abs/1706.02677 for the warm-up).
* ``step``: ``learning_rate``, times 0.1 after 50% and again after 75% of the
  steps (``PiecewiseConstantDecay``), the classic ImageNet/CIFAR step schedule.
"""

from __future__ import annotations

import keras

SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
# The `step` schedule: (fraction of total steps, factor applied from then on).
STEP_DROPS = ((0.5, 0.1), (0.75, 0.01))


def build_schedule(
    name: str, learning_rate: float, total_steps: int, warmup_steps: int = 0
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Returns ``learning_rate`` (``constant``) or a Keras schedule of the step.

    Args:
      name: One of ``SCHEDULES``.
      learning_rate: The peak learning rate, > 0.
      total_steps: The number of optimizer steps of the whole run, >= 1.
      warmup_steps: ``warmup_cosine`` only: steps of linear warm-up, in
        ``[1, total_steps)``. Must be 0 for every other schedule.

    Raises:
      ValueError: a value that cannot work, naming its flag.

    Examples:
      >>> lr = build_schedule("warmup_cosine", 1e-3, total_steps=100, warmup_steps=10)
      >>> round(float(lr(5)), 6), round(float(lr(10)), 6)
      (0.0005, 0.001)
    """
    if name not in SCHEDULES:
        raise ValueError(f"`lr_schedule` must be one of {list(SCHEDULES)}. Received: lr_schedule={name!r}.")
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={learning_rate}.")
    if total_steps < 1:
        raise ValueError(f"The run must have at least one step. Received: total_steps={total_steps}.")
    if name != "warmup_cosine" and warmup_steps:
        raise ValueError(
            "`warmup_steps` is used only by lr_schedule='warmup_cosine'. "
            f"Received: warmup_steps={warmup_steps} with lr_schedule={name!r}."
        )
    if name == "constant":
        return learning_rate
    if name == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    if name == "warmup_cosine":
        if not 0 < warmup_steps < total_steps:
            raise ValueError(
                f"lr_schedule='warmup_cosine' needs 0 < warmup_steps < total steps ({total_steps}). "
                f"Received: warmup_steps={warmup_steps}."
            )
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=total_steps - warmup_steps,
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
        )
    # step: boundaries must be strictly increasing, even for a very short run.
    boundaries: list[int] = []
    values = [learning_rate]
    for fraction, factor in STEP_DROPS:
        boundary = max(int(fraction * total_steps), boundaries[-1] + 1 if boundaries else 1)
        boundaries.append(boundary)
        values.append(learning_rate * factor)
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
