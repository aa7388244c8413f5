"""Every Keras 3 / TensorFlow workaround that `strategies.fit` needs, in one place.

Each fix names the upstream report and the versions it was written and tested
for (keras 3.15.x with TensorFlow 2.21.x, CPU, 2 logical devices and 2-process
clusters on 127.0.0.1; TensorFlow 2.20.x with keras 3.15.x by the fast suite in
`nox -s fast_tf_min`). Each one touches Keras internals, and sections 1 and 5
also TensorFlow's (`tf.distribute` replica contexts, `MirroredStrategy`'s private
`_collective_key_base`), so each first calls `check_versions`, which checks the
Keras *and* the TensorFlow version: on any other Keras or TensorFlow version it raises
`KerasCompatError` instead of patching blindly. Set the environment variable
``STRATEGIES_ALLOW_UNVERIFIED_KERAS=1`` to try them anyway, after running
``tests/strategies/test_keras_compat.py`` on that version.

Every fix is installed on one model or optimizer *instance*, with one
exception: section 1 patches Keras' backend class `TFOptimizer` once, so that
subclasses' own methods keep running; the patched methods behave exactly as
before for every optimizer that `strategies.fit` did not flag, so code outside
`strategies.fit` is not affected.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import optimizer as tf_optimizer
from keras.src.optimizers import base_optimizer

VERIFIED_KERAS = ((3, 15),)
# 2.20: the newest TPU build (tensorflow-tpu), verified by `nox -s fast_tf_min`.
VERIFIED_TENSORFLOW = ((2, 20), (2, 21))
ALLOW_UNVERIFIED_ENV = "STRATEGIES_ALLOW_UNVERIFIED_KERAS"

_Base = base_optimizer.BaseOptimizer


class KerasCompatError(RuntimeError):
    """A workaround was needed on a Keras/TensorFlow version it was not verified on."""


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _pretty(verified: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{a}.{b}.x" for a, b in verified)


def check_versions(workaround: str, keras_version: str | None = None,
                   tf_version: str | None = None) -> None:
    """Raises `KerasCompatError` unless this Keras/TF pair is one the fixes were verified on.

    Args:
        workaround: what is about to be patched and why (the upstream issue), for the message.
        keras_version: defaults to the installed ``keras.__version__``.
        tf_version: defaults to the installed ``tf.__version__``.
    """
    keras_version = keras_version or keras.__version__
    tf_version = tf_version or tf.__version__
    ok = (_major_minor(keras_version) in VERIFIED_KERAS
          and _major_minor(tf_version) in VERIFIED_TENSORFLOW)
    if ok or os.environ.get(ALLOW_UNVERIFIED_ENV) == "1":
        return
    raise KerasCompatError(
        f"strategies.fit needs a workaround for {workaround}, which was written and tested "
        f"for keras {_pretty(VERIFIED_KERAS)} with tensorflow {_pretty(VERIFIED_TENSORFLOW)}; "
        f"this is keras {keras_version} with tensorflow {tf_version}. Check whether the upstream "
        "bug is fixed, run tests/strategies/test_keras_compat.py, then extend VERIFIED_* in "
        f"strategies/compat/_keras_compat.py (or set {ALLOW_UNVERIFIED_ENV}=1 to try it anyway)."
    )


def _install(obj: Any, name: str, function: Callable[..., Any]) -> None:
    # object.__setattr__: Keras' __setattr__ would try to track the bound method.
    object.__setattr__(obj, name, types.MethodType(function, obj))


# ---------------------------------------------------------------------------
# 1. Gradients: all-reduce once, first; then every optimizer's own rule, replica-locally.
#
# Keras 3's TF optimizer all-reduces inside `_backend_update_step`, i.e. *after*
# `_clip_gradients`, so clipnorm/global_clipnorm clip each replica's partial
# gradient (2 replicas with g=2, SGD(1), clipnorm=1 move w by -2, one device by
# -1; the same defect as tensorflow/tensorflow#33929). The all-reduce and the
# update are merge_calls, and gradient accumulation / EMA overwrite put them in
# an `ops.cond`, where MirroredStrategy forbids merge_call
# (keras-team/keras#20582). And `LossScaleOptimizer` decides "finite" on each
# replica's own gradients, before any all-reduce, so one replica's overflow
# reaches every weight.
#
# The mechanism, in two parts:
# * The *outermost* optimizer's `apply` all-reduces the gradients (SUM: Keras
#   divides each replica's loss by num_replicas) and then calls its own class's
#   `apply` -- LossScaleOptimizer's, MultiOptimizer's, a tfopt wrapper's or
#   BaseOptimizer's, whatever the class defines. Every wrapper's finite check,
#   every clip, accumulation and update then sees the global gradient, which is
#   identical on every replica.
# * The merge_call paths of the backend class `TFOptimizer` are patched ONCE,
#   on the class: for an optimizer that `synchronize_gradients` flagged, and in
#   a replica context, `_backend_update_step`, `_apply_weight_decay`,
#   `_backend_increment_gradient_accumulators` and
#   `_overwrite_model_variables_with_average_value` take BaseOptimizer's
#   replica-local path (each replica updates its own copy of each
#   aggregation="none" variable with the same values -- what TF itself does
#   where merge_call is disabled), and `_all_reduce_sum_gradients` is the
#   identity. For every other optimizer, and in a cross-replica context, they
#   are TFOptimizer's own methods, unchanged.
# Because the patch sits on the base class, a subclass's override still runs
# (Nadam's per-step `u_product` in `_backend_update_step`, Muon's and tfopt
# LARS/LAMB's `_apply_weight_decay`), and its `super()` call lands on the
# replica-local path. An instance patch cannot do this: an attribute on the
# instance shadows the subclass's method (which is how an earlier version of
# this fix turned Nadam into NaN and applied LARS/LAMB's weight decay twice).
#
# What this cannot reach is refused by `check_supported` before training: a
# class outside Keras and tfopt (whose classes the equivalence matrix in
# tests/strategies/test_equivalence.py checks one by one) that overrides one
# of these hooks without calling `super()`, or overrides the merge_call
# helpers this path bypasses.
# ---------------------------------------------------------------------------

_TFOptimizer = tf_optimizer.TFOptimizer
_FLAG = "_strategies_replica_local"
_PATCHED = "_strategies_replica_local_patch"
_ISSUES = "tensorflow/tensorflow#33929, keras-team/keras#20582"
# Hooks whose TFOptimizer version merge_calls; the flagged path replaces them.
_REPLICA_LOCAL_HOOKS = ("_backend_update_step", "_apply_weight_decay",
                        "_backend_increment_gradient_accumulators",
                        "_overwrite_model_variables_with_average_value")
# Reached only from TFOptimizer's own merge_call path, which flagged optimizers skip.
_BYPASSED = ("_all_reduce_sum_gradients", "_distributed_tf_update_step")
_VERIFIED_MODULES = ("keras.src.optimizers.", "keras.src.backend.")
# Outside Keras, a class vouches for its own overrides: it sets this class
# attribute, `{hook name: why it is right on the all-reduce-first path}`, next
# to each hook it overrides (tfopt does; see docs/equivalence.md). Only the
# class's own dict counts, so a subclass that overrides a hook again must say so again.
_DECLARED_HOOKS = "replica_local_hooks"


class UnsupportedOptimizerError(ValueError):
    """An optimizer whose own methods the all-reduce-first path cannot keep."""


def _replica_local(optimizer: Any) -> bool:
    return (getattr(optimizer, _FLAG, False)
            and not tf.distribute.in_cross_replica_context())


def _replica_local_update_step(self: Any, grads: list[Any], trainable_variables: list[Any],
                               learning_rate: Any) -> None:
    # TFOptimizer's contract (update_step sees tf.Variables, which tfopt's fused
    # kernels need), minus the all-reduce and the merge_call.
    for grad, variable in zip(grads, trainable_variables, strict=True):
        if isinstance(variable, keras.Variable):
            variable = variable.value
        self.update_step(grad, variable, learning_rate)


def _identity_all_reduce(self: Any, grads_and_vars: Any) -> list[Any]:
    return list(grads_and_vars)


_REPLICA_LOCAL = {
    "_backend_update_step": _replica_local_update_step,
    "_apply_weight_decay": _Base._apply_weight_decay,
    "_backend_increment_gradient_accumulators": _Base._backend_increment_gradient_accumulators,
    "_overwrite_model_variables_with_average_value":
        _Base._overwrite_model_variables_with_average_value,
    "_all_reduce_sum_gradients": _identity_all_reduce,
}


def _dispatch(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    replica_local = _REPLICA_LOCAL[name]

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _replica_local(self):
            return replica_local(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"TFOptimizer.{name}"
    method.__doc__ = original.__doc__
    setattr(method, _PATCHED, original)
    return method


def _patch_tf_optimizer_once() -> None:
    for name in _REPLICA_LOCAL:
        current = _TFOptimizer.__dict__[name]
        if getattr(current, _PATCHED, None) is None:
            setattr(_TFOptimizer, name, _dispatch(name, current))


def _optimizer_tree(optimizer: Any) -> list[Any]:
    """``optimizer`` and every optimizer it hands gradients to (wrappers, MultiOptimizer)."""
    found, stack = [], [optimizer]
    while stack:
        current = stack.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        stack.append(getattr(current, "inner_optimizer", None))
        stack.extend(getattr(current, "_inner_optimizers", None) or ())
    return found


def _calls_super(function: Any, name: str) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and "super" in code.co_names and name in code.co_names


def check_supported(optimizer: keras.optimizers.Optimizer) -> None:
    """Raises `UnsupportedOptimizerError` if the all-reduce-first path would skip a method
    that ``optimizer`` (or an optimizer it wraps) defines."""
    for member in _optimizer_tree(optimizer):
        for cls in type(member).__mro__:
            if cls is _TFOptimizer or cls.__module__.startswith(_VERIFIED_MODULES):
                continue
            declared = cls.__dict__.get(_DECLARED_HOOKS, {})
            for name in _REPLICA_LOCAL_HOOKS + _BYPASSED:
                function = cls.__dict__.get(name)
                if function is None or name in declared or (name in _REPLICA_LOCAL_HOOKS
                                        and _calls_super(function, name)):
                    continue
                how = ("is bypassed where gradients are all-reduced first" if name in _BYPASSED
                       else f"does not call super().{name}(), which is where the "
                       "replica-local update runs")
                raise UnsupportedOptimizerError(
                    f"strategies.fit cannot give optimizer {cls.__name__} one-device semantics "
                    f"over several replicas: its method {cls.__name__}.{name} {how} "
                    f"({_ISSUES}); call super().{name}(...) from it instead of distributing "
                    "by hand, or pass clip_gradients='per_replica' to keep Keras' own order."
                )


def _all_reduce_then_apply(self: Any, grads: list[Any], trainable_variables: Any = None) -> Any:
    grads = list(grads)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        present = [i for i, g in enumerate(grads) if g is not None]
        if present:
            reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
            for i, g in zip(present, reduced, strict=True):
                grads[i] = g
    if not self.built and trainable_variables is not None:
        with keras.name_scope(self.name, caller=self):
            self.build(list(trainable_variables))
    # Building creates a MultiOptimizer's sub-optimizers: check and flag them
    # before they apply (synchronize_gradients saw only those that existed then).
    check_supported(self)
    for member in _optimizer_tree(self):
        object.__setattr__(member, _FLAG, True)
    return type(self).apply(self, grads, trainable_variables)


def synchronize_gradients(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Makes ``optimizer`` all-reduce once, before any wrapper, clip, accumulation or update.

    After this, ``optimizer.apply`` (and ``apply_gradients``) all-reduce the
    gradients in the replica context and then run ``optimizer``'s own class
    methods, and the optimizers it wraps take `TFOptimizer`'s replica-local
    path (see this module's section 1). Safe with one replica (the all-reduce
    is skipped), but only needed where ``num_replicas_in_sync > 1``.

    Raises:
        UnsupportedOptimizerError: ``optimizer`` or one it wraps overrides a
            hook this path cannot keep (see `check_supported`).

    Returns:
        ``optimizer``.
    """
    check_versions(f"clipping before the all-reduce, merge_call inside a cond and loss-scale "
                   f"checks per replica ({_ISSUES})")
    check_supported(optimizer)
    _patch_tf_optimizer_once()
    for member in _optimizer_tree(optimizer):
        object.__setattr__(member, _FLAG, True)
    _install(optimizer, "apply", _all_reduce_then_apply)
    return optimizer


def is_synchronized(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether `synchronize_gradients` was applied to ``optimizer``."""
    return getattr(optimizer, _FLAG, False) and "apply" in vars(optimizer)


def needs_merge_call_in_cond(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether stock Keras would merge_call inside a cond with this optimizer (keras#20582)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return bool(optimizer.gradient_accumulation_steps
                or (optimizer.use_ema and optimizer.ema_overwrite_frequency))


# ---------------------------------------------------------------------------
# 2. Building the model without pulling a batch (keras-team/keras#20585,
# tensorflow/tensorflow#72388). Under MultiWorkerMirroredStrategy,
# `TensorFlowTrainer._maybe_symbolic_build` calls an eager
# `strategy.reduce("MEAN", batch, axis=None)` on PerReplica inputs, which
# raises "Attempt to convert a value (PerReplica...) to a Tensor". Only shapes
# and dtypes are needed to build, and the dataset's element_spec has them.
# ---------------------------------------------------------------------------


def build_from_spec(model: keras.Model, element_spec: Any) -> None:
    """Builds ``model``, its compiled loss/metrics and optimizer from a batch's TensorSpecs."""
    check_versions("the symbolic build under MultiWorkerMirroredStrategy (keras-team/keras#20585)")
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=element_spec)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def build_without_batches(model: keras.Model, element_spec: Any) -> None:
    """Makes ``model.fit``/``evaluate`` build from ``element_spec`` instead of a reduced batch."""
    build_from_spec(model, element_spec)

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if data_batch is not None:  # train_on_batch & co. pass a real batch.
            element = tree.map_structure(
                lambda t: None if t is None else tf.TensorSpec(t.shape, t.dtype), data_batch)
            build_from_spec(self, element)

    _install(model, "_maybe_symbolic_build", _maybe_symbolic_build)


# ---------------------------------------------------------------------------
# 3. The train/test functions for multi-replica strategies.
# * keras-team/keras#20585: `reduce_per_replica` reduces scalar logs under
#   MultiWorkerMirroredStrategy with `strategy.reduce("MEAN", v, axis=0)`:
#   "Invalid reduction dimension 0 for input with 0 dimensions".
# * keras-team/keras#19246: with steps_per_execution > 1 under
#   MirroredStrategy, Keras' Optional-based while_loop fails with "You must
#   feed a value for placeholder tensor 'while/cond/Placeholder'".
# Keras calls `model.train_function(iterator)` and builds it only when it is
# None, so setting these attributes is enough.
# ---------------------------------------------------------------------------


def _step_function(model: keras.Model, step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    strategy = model.distribute_strategy
    steps = int(model.steps_per_execution)

    def one_step(data: Any) -> Any:
        outputs = strategy.run(step, args=(data,))
        # Logs are per-replica partial results; Keras averages them, so do we.
        return tree.map_structure(
            lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), outputs)

    @tf.function(reduce_retracing=True)
    def multi_step(iterator: Any) -> Any:
        # The first `next` raises OutOfRangeError at the end of the data, which
        # Keras' EpochIterator turns into StopIteration; later steps of the
        # same execution stop early instead, keeping the steps already taken.
        outputs = one_step(next(iterator))
        for _ in tf.range(steps - 1):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            outputs = one_step(optional.get_value())
        return outputs

    one_step_function = tf.function(one_step, reduce_retracing=True)

    def function(iterator: Any) -> Any:
        if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            return multi_step(iterator)
        outputs = None  # train_on_batch / test_on_batch hand over a Python generator.
        for data in iterator:
            outputs = one_step_function(data)
        return outputs

    return function


def install_step_functions(model: keras.Model) -> None:
    """Gives ``model`` train/test functions that work under Mirrored and multi-worker strategies."""
    check_versions("scalar log reduction under MultiWorkerMirroredStrategy "
                   "(keras-team/keras#20585) and steps_per_execution > 1 under "
                   "MirroredStrategy (keras-team/keras#19246)")
    model.train_function = _step_function(model, model.train_step)
    model.test_function = _step_function(model, model.test_step)


# ---------------------------------------------------------------------------
# 4. Atomic counters under ParameterServerStrategy (keras-team/keras#18668,
# #18624). `KerasVariable.assign_add` is `self.assign(self + value)`: a read
# then a write. Workers that run steps concurrently lose increments, so after
# 120 scheduled steps `optimizer.iterations` read 91 here, and the metrics'
# totals and counts are short too. TF's own assign_add on the parameter
# server's variable is one atomic op.
# ---------------------------------------------------------------------------


def _atomic_assign_add(self: Any, value: Any) -> Any:
    return self.value.assign_add(tf.cast(value, self.value.dtype))


def _atomic_assign_sub(self: Any, value: Any) -> Any:
    return self.value.assign_sub(tf.cast(value, self.value.dtype))


def make_counters_atomic(model: keras.Model) -> None:
    """Makes the optimizer's step counter and every metric variable update atomically."""
    check_versions("non-atomic counters under ParameterServerStrategy (keras-team/keras#18668)")
    optimizer = model.optimizer
    counters = [optimizer._iterations] + list(model.metrics_variables)
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        counters.append(inner._iterations)
    for variable in counters:
        _install(variable, "assign_add", _atomic_assign_add)
        _install(variable, "assign_sub", _atomic_assign_sub)


# ---------------------------------------------------------------------------
# 5. Several MirroredStrategy objects in one process (tensorflow/tensorflow#62790).
# Each MirroredStrategy numbers its collective groups from 1 and its collective
# instances from 100, while the collective runtime caches instances per
# process. Over CPUs (RING collectives) or GPUs (NCCL), a second strategy whose
# model has other shapes then fails with "Shape mismatch in the collective
# instance 100", and every collective after it in the process is aborted.
# TF's own tests avoid it with the class attribute `_collective_key_base`.
# ---------------------------------------------------------------------------

_KEY_BASE_STRIDE = 10_000
_key_bases = itertools.count(1)
_key_base_lock = threading.Lock()


def mirrored_strategy(devices: list[str] | None = None,
                      cross_device_ops: tf.distribute.CrossDeviceOps | None = None,
                      ) -> tf.distribute.MirroredStrategy:
    """``tf.distribute.MirroredStrategy(devices, cross_device_ops)`` with collective keys
    that no other strategy in this process uses."""
    check_versions("collective keys shared by MirroredStrategy objects "
                   "(tensorflow/tensorflow#62790)")
    cls = tf.distribute.MirroredStrategy
    with _key_base_lock:
        previous = cls._collective_key_base
        cls._collective_key_base = next(_key_bases) * _KEY_BASE_STRIDE
        try:
            return cls(devices=devices, cross_device_ops=cross_device_ops)
        finally:
            cls._collective_key_base = previous


# ---------------------------------------------------------------------------
# 6. No EMA overwrite between the two fit calls of a resumed epoch.
#
# A resumed run finishes its interrupted epoch in one ``model.fit`` call and
# runs the later epochs in a second one. Keras ends every ``fit`` with
# ``optimizer.finalize_variable_values`` (weights := EMA when ``use_ema``),
# and offers no switch for it: after the first call, the averages would land
# in the weights mid-run, which the uninterrupted run (one call) does only at
# its end. The method is shadowed on the instance for that call.
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def no_final_ema_overwrite(model: keras.Model) -> Iterator[None]:
    """Keeps ``model.fit`` from overwriting the weights with their EMA when this call ends."""
    optimizer = model.optimizer
    if optimizer is None:
        yield
        return
    check_versions("model.fit's final EMA overwrite (Optimizer.finalize_variable_values), "
                   "which no public switch turns off")
    object.__setattr__(optimizer, "finalize_variable_values", lambda variables: None)
    try:
        yield
    finally:
        object.__delattr__(optimizer, "finalize_variable_values")


# ---------------------------------------------------------------------------
# 7. Private state that the training loops read (degrades to None, no version guard).
# ---------------------------------------------------------------------------


def examples_seen(model: keras.Model) -> float | None:
    """Examples counted by the loss tracker since the last ``reset_metrics``, or None.

    Keras' default ``train_step`` weights the loss tracker by the batch size,
    so its ``count`` is the exact number of examples, summed over replicas.
    A custom ``train_step`` that skips the tracker leaves it at 0 (-> None).
    """
    tracker = getattr(model, "_loss_tracker", None)
    count = getattr(tracker, "count", None)
    if count is None:
        return None
    value = float(keras.ops.convert_to_numpy(count))
    return value or None


# ---------------------------------------------------------------------------
# 7. TensorFlow's in-memory file system, ram:// (TF 2.20.x and 2.21.x; no
# upstream report found). Its RamFileSystem keeps one map entry per path and
# answers by string prefix:
# * RenameFile moves only the entry it names, so after
#   `tf.io.gfile.rename("ram://a/b", "ram://a/c")` the directory c is empty
#   and the files are still under b, which no longer lists. TFDS prepares
#   every dataset in an "incomplete..." directory and renames it into place,
#   so a dataset prepared into ram:// came out empty.
# * IsDirectory is true for any prefix of a file's path: with only
#   "ram://run/ckpt-3.index" there, `isdir("ram://run/ckpt-3")` is True, so
#   `tf.train.load_checkpoint(prefix)` takes the checkpoint prefix for a
#   directory and finds no checkpoint in it.
# gs:// (TF renames each object; directories are "/"-delimited) and local
# directories are fine. Only ram:// paths take these paths.
# ---------------------------------------------------------------------------


def checkpoint_reader(prefix: str) -> Any:
    """``tf.train.load_checkpoint(prefix)`` for a checkpoint prefix, on ram:// too."""
    if not prefix.startswith("ram://"):
        return tf.train.load_checkpoint(prefix)
    check_versions("checkpoint prefixes that TensorFlow's ram:// file system calls directories")
    # The public reader takes the prefix as given, without the isdir() test.
    return tf.compat.v1.train.NewCheckpointReader(prefix)


def rename_tree(src: str, dst: str, overwrite: bool = False) -> None:
    """``tf.io.gfile.rename(src, dst, overwrite)``; on ram://, a directory moves file by file."""
    if not (src.startswith("ram://") and tf.io.gfile.isdir(src)):
        tf.io.gfile.rename(src, dst, overwrite=overwrite)
        return
    check_versions("directory renames on TensorFlow's ram:// file system")
    if tf.io.gfile.exists(dst) and not overwrite:
        raise FileExistsError(f"cannot rename {src} to {dst}: {dst} exists")
    prefix = src.rstrip("/") + "/"
    for root, _, files in tf.io.gfile.walk(src):
        target_root = dst.rstrip("/") + "/" + root[len(prefix):] if root != src.rstrip("/") else dst
        tf.io.gfile.makedirs(target_root)
        for name in files:
            tf.io.gfile.rename(f"{root}/{name}", f"{target_root}/{name}", overwrite=overwrite)
    try:
        tf.io.gfile.rmtree(src)
    except tf.errors.NotFoundError:
        pass  # Only files were there: ram:// has no entry for a directory nobody made.
