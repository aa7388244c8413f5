"""The cells of the equivalence matrix, and a runner that trains many of them in one process.

    python -m tests.strategies.equivalence_cells multi_worker_mirrored|parameter_server OUT_DIR \
        [PATTERN]

(PATTERN, an fnmatch pattern such as ``'mlp/keras.Nadam/*'``, reruns a few cells.)

Used by test_equivalence.py in-process (OneDevice, Mirrored over 2 logical
CPUs) and by the tasks of its two local clusters (one MultiWorkerMirrored pair,
one parameter-server cluster with a single worker), which run every cell in
one go and write ``OUT_DIR/<strategy>-<task>.npz``.

A cell is ``model/optimizer/option``. Nothing here is a hand list of
optimizers: they come from ``keras.optimizers`` by introspection and from
``tfopt.available()``, so a new Keras built-in or a newly registered tfopt
optimizer joins the matrix with no edit. Wrappers are crossed with
representative inner optimizers; options are applied to the optimizer that
clips and updates (the inner one, for a wrapper).
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import tfopt

GLOBAL_BATCH = 8
BATCHES = 3  # per epoch
EPOCHS = 3
LEARNING_RATE = 0.05
# Only where the shared rate would barely move the weights (Adadelta's step
# is ~learning_rate * sqrt(epsilon) / |g| at first).
LEARNING_RATES = {"keras.Adadelta": 1.0}

# Option name -> (optimizer kwargs, compile kwargs). Values chosen so that
# each one binds on this problem (the gradients' norms are ~0.1-1).
OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "plain": ({}, {}),
    "clipnorm": ({"clipnorm": 0.05}, {}),
    "clipvalue": ({"clipvalue": 0.01}, {}),
    "global_clipnorm": ({"global_clipnorm": 0.1}, {}),
    "weight_decay": ({"weight_decay": 0.1}, {}),  # biases excluded, see _exclude_biases
    "accumulate2": ({"gradient_accumulation_steps": 2}, {}),
    "ema": ({"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2}, {}),
    "steps_per_execution3": ({}, {"steps_per_execution": 3}),
}

Factory = Callable[[dict[str, Any]], keras.optimizers.Optimizer]


def keras_optimizer_classes() -> dict[str, type]:
    """Every optimizer class ``keras.optimizers`` exports, wrappers excluded."""
    found = {}
    for name, cls in inspect.getmembers(keras.optimizers, inspect.isclass):
        if (issubclass(cls, keras.optimizers.Optimizer) and cls is not keras.optimizers.Optimizer
                and not _is_wrapper(cls)):
            found[f"keras.{name}"] = cls
    return found


def _is_wrapper(cls: type) -> bool:
    parameters = inspect.signature(cls.__init__).parameters
    return bool({"inner_optimizer", "optimizer", "optimizer_map"} & set(parameters))


def _keras_factory(key: str, cls: type) -> Factory:
    return lambda kwargs: cls(learning_rate=LEARNING_RATES.get(key, LEARNING_RATE), **kwargs)


def _tfopt_factory(name: str) -> Factory:
    cls = tfopt.get_class(name)
    if _is_wrapper(cls):  # e.g. Lookahead: options go to the inner optimizer.
        return lambda kwargs: tfopt.get(name, optimizer=keras.optimizers.SGD(
            LEARNING_RATE, momentum=0.9, **kwargs))
    return lambda kwargs: tfopt.get(name, learning_rate=LEARNING_RATE, **kwargs)


def base_optimizers() -> dict[str, Factory]:
    """Every Keras optimizer class and every tfopt name, as ``factory(option_kwargs)``."""
    factories = {key: _keras_factory(key, cls) for key, cls in keras_optimizer_classes().items()}
    factories.update({f"tfopt.{name}": _tfopt_factory(name) for name in tfopt.available()})
    return factories


def _adam(kwargs: dict[str, Any]) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(LEARNING_RATE, **kwargs)


def _nadam(kwargs: dict[str, Any]) -> keras.optimizers.Optimizer:
    return keras.optimizers.Nadam(LEARNING_RATE, **kwargs)


def _momentum(kwargs: dict[str, Any]) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(LEARNING_RATE, momentum=0.9, **kwargs)


def wrappers() -> dict[str, Factory]:
    """The wrappers around representative inner optimizers (Adam, Nadam, momentum)."""
    return {
        "LossScaleOptimizer(Adam)": lambda kw: keras.optimizers.LossScaleOptimizer(_adam(kw)),
        "LossScaleOptimizer(Nadam)": lambda kw: keras.optimizers.LossScaleOptimizer(_nadam(kw)),
        "Lookahead(Adam)": lambda kw: tfopt.Lookahead(_adam(kw), sync_period=2),
        "SkipNonFinite(Adam)": lambda kw: tfopt.SkipNonFinite(_adam(kw)),
        "LossScaleOptimizer(SkipNonFinite(Nadam))": lambda kw: keras.optimizers.LossScaleOptimizer(
            tfopt.SkipNonFinite(_nadam(kw))),
        # The first layer's variables get Adam, everything else momentum.
        "MultiOptimizer(Adam,SGD)": lambda kw: keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(_momentum(kw), {".*hidden.*": _adam(kw)})),
    }


# --- models -------------------------------------------------------------------------


def _mlp(name: str, dtype: str | None = None) -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh",
                                                                   name="hidden", dtype=dtype),
                             keras.layers.Dense(2, name="out")], name=name)


def _mixed_float16(name: str) -> keras.Model:
    # The hidden layer computes in float16 (float32 weights); the output stays float32.
    return _mlp(name, dtype="mixed_float16")


def _embedding(name: str) -> keras.Model:
    # The table's gradient is an IndexedSlices (sparse) under TensorFlow.
    return keras.Sequential([keras.Input((3,), dtype="int32"),
                             keras.layers.Embedding(10, 4, name="hidden"),
                             keras.layers.Flatten(), keras.layers.Dense(2, name="out")],
                            name=name)


class CustomTrainStep(keras.Model):
    """The Keras guide's "customizing what happens in fit" pattern (Keras 3, TensorFlow)."""

    def __init__(self, subnets: list[keras.Model]) -> None:
        super().__init__()
        self.subnets = subnets

    def call(self, x: Any) -> Any:
        return [subnet(x) for subnet in self.subnets]

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


# Model kind -> (subnet builder, whether the bundle is a CustomTrainStep).
MODELS: dict[str, tuple[Callable[[str], keras.Model], bool]] = {
    "mlp": (_mlp, False), "subclassed": (_mlp, True), "embedding": (_embedding, False),
    "mixed_float16": (_mixed_float16, False),
}
# The models other than "mlp" are crossed with these optimizers and options only.
_EXTRA = (("keras.SGD", "keras.Adam", "tfopt.lazy_adam", "LossScaleOptimizer(Adam)"),
          ("plain", "global_clipnorm", "accumulate2"))
EXTRA_MODELS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "subclassed": _EXTRA, "embedding": _EXTRA,
    "mixed_float16": (("LossScaleOptimizer(Adam)", "LossScaleOptimizer(SkipNonFinite(Nadam))"),
                      ("plain", "global_clipnorm")),
}


def all_factories() -> dict[str, Factory]:
    return {**base_optimizers(), **wrappers()}


def cells() -> list[str]:
    """Every cell id, ``model/optimizer/option``, in a fixed order."""
    factories = all_factories()
    ids = [f"mlp/{opt}/{option}" for opt in factories for option in OPTIONS]
    ids += [f"{model}/{opt}/{option}" for model, (optimizers, options) in EXTRA_MODELS.items()
            for opt in optimizers for option in options]
    return ids


def split(cell: str) -> tuple[str, str, str]:
    model, rest = cell.split("/", 1)
    optimizer, option = rest.rsplit("/", 1)
    return model, optimizer, option


def _exclude_biases(optimizer: keras.optimizers.Optimizer) -> None:
    """The weight_decay option with an exclusion: biases are not decayed."""
    stack = [optimizer]
    while stack:
        current = stack.pop()
        if current is None:
            continue
        if getattr(current, "weight_decay", None):
            current.exclude_from_weight_decay(var_names=["bias"])
        stack.append(getattr(current, "inner_optimizer", None))
        stack.extend(getattr(current, "_inner_optimizers", None) or ())
        optimizer_map = getattr(current, "_optimizer_map", None)
        if optimizer_map is not None:
            stack.extend(optimizer_map.values())
            stack.append(getattr(optimizer_map, "default_optimizer", None))


def make_optimizer(cell: str) -> keras.optimizers.Optimizer:
    """The cell's optimizer; raises (ValueError/TypeError) where it does not take the option."""
    _, name, option = split(cell)
    optimizer = all_factories()[name](dict(OPTIONS[option][0]))
    if option == "weight_decay":
        _exclude_biases(optimizer)
    return optimizer


def accepted(cell: str) -> tuple[bool, str]:
    """Whether the cell's optimizer takes its option, and the refusal's message if not."""
    try:
        make_optimizer(cell)
    except (ValueError, TypeError) as error:
        return False, str(error)
    return True, ""


def arrays(model_name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * BATCHES
    if model_name == "embedding":
        x = rng.integers(0, 10, size=(n, 3)).astype(np.int32)
        y = rng.normal(size=(n, 2)).astype(np.float32)
    else:
        x = rng.normal(size=(n, 3)).astype(np.float32)
        y = np.stack([np.sin(x.sum(axis=1)), np.cos(x[:, 0])], axis=1).astype(np.float32)
    return x, y


def dataset(cell: str, repeat: bool = False) -> tf.data.Dataset:
    """Global batches; DATA sharding gives each of 2 workers one half of every batch."""
    data = tf.data.Dataset.from_tensor_slices(arrays(split(cell)[0])).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)
    return data.repeat() if repeat else data


# --- bundles: many cells in one model, one trace ------------------------------------
#
# Tracing dominates a cell's cost (~2 s on one device, ~4.5 s over 2 replicas
# here), so cells that share a model kind, a steps_per_execution and a loss
# scale train side by side in ONE model: cell k is subnet k, with its own
# output, loss and optimizer, and a MultiOptimizer (a callable selector) hands
# each subnet's gradients to that cell's optimizer. Subnets share no variable,
# so each cell's gradients, clipping (global_clipnorm included), accumulation,
# weight decay, EMA and update are exactly those of the cell trained alone.
# LossScaleOptimizer cells share one LossScaleOptimizer around the
# MultiOptimizer (Keras forbids it inside one); the data hold no non-finite
# value, so the shared skip decision never fires here (test_one_device_semantics.py
# pins non-finite gradients). A bundle that fails is retried one cell at a
# time, so that every error is reported against its own cell.

BUNDLE_SIZE = 24


def bundle_key(cell: str) -> tuple[str, int, bool]:
    model_name, name, option = split(cell)
    spe = int(OPTIONS[option][1].get("steps_per_execution", 1))
    return model_name, spe, name.startswith("LossScaleOptimizer(")


def bundles(cell_ids: list[str], alone: frozenset[str] = frozenset()) -> list[list[str]]:
    """Bundles of cells; the ``alone`` cells (expected to fail) each get their own."""
    grouped: dict[tuple[str, int, bool], list[str]] = {}
    for cell in cell_ids:
        if cell not in alone:
            grouped.setdefault(bundle_key(cell), []).append(cell)
    return [group[i:i + BUNDLE_SIZE] for group in grouped.values()
            for i in range(0, len(group), BUNDLE_SIZE)] + [[c] for c in cell_ids if c in alone]


class _Bundle:
    """What model_fn built for a bundle, to read each cell's results after training."""

    def __init__(self, cell_ids: list[str]) -> None:
        self.cells = cell_ids
        self.subnets: list[keras.Model] = []
        self.optimizers: list[keras.optimizers.Optimizer] = []

    def model_fn(self) -> keras.Model:
        model_name, spe, loss_scale = bundle_key(self.cells[0])
        build_subnet, custom = MODELS[model_name]
        self.subnets, self.initial = [], []
        for k, cell in enumerate(self.cells):
            # Seeded by the cell itself: its initial weights do not depend on
            # its bundle, its place in it, or the process.
            keras.utils.set_random_seed(zlib.crc32(cell.encode()))
            self.subnets.append(build_subnet(f"cell{k}"))
            self.initial.append(self.subnets[-1].get_weights())
        self.optimizers = []
        owner = {}
        for k, (cell, subnet) in enumerate(zip(self.cells, self.subnets, strict=True)):
            optimizer = make_optimizer(cell)
            if loss_scale:
                optimizer = optimizer.inner_optimizer
            self.optimizers.append(optimizer)
            owner.update({id(v): k for v in subnet.trainable_variables})

        def select(variable: Any) -> keras.optimizers.Optimizer:
            optimizer = self.optimizers[owner[id(variable)]]
            if isinstance(optimizer, keras.optimizers.MultiOptimizer):
                return optimizer._optimizer_map(variable)
            return optimizer

        optimizer = keras.optimizers.MultiOptimizer(select)
        if loss_scale:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        if custom:
            model = CustomTrainStep(self.subnets)
        else:
            inputs = self.subnets[0].inputs[0]
            inputs = keras.Input(inputs.shape[1:], dtype=inputs.dtype)
            model = keras.Model(inputs, [subnet(inputs) for subnet in self.subnets])
        model.compile(optimizer=optimizer, loss=["mse"] * len(self.subnets),
                      steps_per_execution=spe)
        return model

    def dataset(self, repeat: bool) -> tf.data.Dataset:
        k = len(self.cells)
        return dataset(self.cells[0], repeat).map(lambda x, y: (x, (y,) * k))

    def results(self) -> dict[str, dict[str, np.ndarray]]:
        found = {}
        for cell, subnet, initial, optimizer in zip(self.cells, self.subnets, self.initial,
                                                    self.optimizers, strict=True):
            result = {f"w{i}": np.asarray(w) for i, w in enumerate(subnet.get_weights())}
            result.update({f"initial{i}": np.asarray(w) for i, w in enumerate(initial)})
            if isinstance(optimizer, keras.optimizers.MultiOptimizer):
                counted = optimizer.optimizers
            else:
                counted = [optimizer]
            result["iterations"] = np.asarray(
                [int(keras.ops.convert_to_numpy(o.iterations)) for o in counted])
            found[cell] = result
        return found


def train_bundle(cell_ids: list[str], strategy: tf.distribute.Strategy,
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Trains the cells side by side with ONE `strategies.fit`; returns each one's weights."""
    import strategies

    bundle = _Bundle(cell_ids)
    if isinstance(strategy, tf.distribute.ParameterServerStrategy):
        # Parameter servers take the input as a dataset_fn, built on each worker;
        # with one worker its per-replica batches are the global batches.
        strategies.fit(bundle.model_fn, lambda context: bundle.dataset(repeat=True),
                       strategy=strategy, epochs=EPOCHS, steps_per_epoch=BATCHES, verbose=0)
    else:
        strategies.fit(bundle.model_fn, bundle.dataset(repeat=False), strategy=strategy,
                       epochs=EPOCHS, verbose=0)
    return bundle.results()


def train_all(cell_ids: list[str], strategy: tf.distribute.Strategy,
              alone: frozenset[str] = frozenset(),
              ) -> Iterator[tuple[str, dict[str, np.ndarray] | str]]:
    """Yields (cell, result) or (cell, error text): one failing cell stops no other."""
    for group in bundles(cell_ids, alone):
        try:
            yield from train_bundle(group, strategy).items()
            continue
        except Exception:  # retried cell by cell below.
            if len(group) == 1:
                yield group[0], traceback.format_exc(limit=6)[-3000:]
                continue
        for cell in group:
            try:
                yield from train_bundle([cell], strategy).items()
            except Exception:  # reported per cell by the test.
                yield cell, traceback.format_exc(limit=6)[-3000:]


def save(path: str, results: dict[str, dict[str, np.ndarray] | str]) -> None:
    arrays_out, errors = {}, {}
    for cell, result in results.items():
        if isinstance(result, str):
            errors[cell] = result
        else:
            arrays_out.update({f"{cell}//{k}": v for k, v in result.items()})
    np.savez(path + ".tmp.npz", **arrays_out)
    os.replace(path + ".tmp.npz", path + ".npz")
    with open(path + ".errors.json", "w") as f:
        json.dump(errors, f)


def load(path: str) -> dict[str, dict[str, np.ndarray] | str]:
    results: dict[str, dict[str, np.ndarray] | str] = {}
    with np.load(path + ".npz") as saved:
        for key in saved.files:
            cell, name = key.split("//")
            results.setdefault(cell, {})[name] = saved[key]  # type: ignore[index]
    with open(path + ".errors.json") as f:
        results.update(json.load(f))
    return results


def main(argv: list[str]) -> None:
    import strategies

    kind, out_dir = argv[1], argv[2]
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    name = f"{task['type']}{task['index']}"
    if kind == "parameter_server":
        config = strategies.StrategyConfig(strategy="parameter_server", cluster_timeout=60)
        if strategies.is_server_task(config):
            strategies.serve_forever(config, timeout=600)
            return
        strategy = strategies.build(config)
    else:
        strategy = strategies.build("multi_worker_mirrored")
    pattern = argv[3] if len(argv) > 3 else "*"
    runnable = [c for c in cells() if accepted(c)[0] and fnmatch.fnmatchcase(c, pattern)]
    from tests.strategies.test_equivalence import expected_to_fail

    results = dict(train_all(runnable, strategy, alone=expected_to_fail(kind, runnable)))
    save(os.path.join(out_dir, f"{kind}-{name}"), results)


if __name__ == "__main__":
    main(sys.argv)
