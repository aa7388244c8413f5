"""Cloud paths stay cloud paths: a ``scheme://`` value reaches TFDS, the checkpointer and TensorBoard unchanged.

TF's gs:// endpoints are hard-coded, so no emulator stands in for GCS: gs://
values are followed with spies up to the call that would reach the network.
TF's in-memory ram:// file system goes through the same `tf.io.gfile` layer and
works in one process, so the end-to-end run (prepare, train, checkpoint,
resume) uses it for real, and checks that nothing lands on the local disk.
"""

from __future__ import annotations

import json
import os
import uuid

import keras
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import strategies
from launch import _data, _job, _paths
from strategies.training import _checkpointing, _run_directory
from tests.launch.test_train import run_main

GS_DATA = "gs://bucket/tfds"
GS_RUN = "gs://bucket/run"


class _Reached(Exception):  # noqa: N818  Raised by a spy where the network would start.
    pass


# --- _paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["gs://bucket/a/b", "ram://x", "gs://bucket/~/a", "hdfs://nn:8020/a/../b"])
def test_cloud_paths_pass_through_unchanged(path: str) -> None:
    assert _paths.is_cloud(path)
    assert _paths.resolve(path) == path


def test_tilde_is_expanded_in_local_paths_only(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _paths.resolve("~/data") == os.path.join(str(tmp_path), "data")
    assert _paths.resolve("relative/x") == os.path.join(os.getcwd(), "relative", "x")
    assert not _paths.is_cloud("./ram:/tfds") and not _paths.is_cloud("/local/gs:/x")


def test_writable_check_uses_gfile_for_cloud_paths(monkeypatch) -> None:
    root = f"ram://paths-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(f"{root}/a_file", "w") as f:
        f.write("x")
    assert _paths.unwritable_reason(f"{root}/a_file") == f"{root}/a_file is a file"
    assert _paths.unwritable_reason(f"{root}/new/dir") is None
    assert "no file system for nosuch://" in _paths.unwritable_reason("nosuch://x")

    def no_os_path(*args, **kwargs):
        raise AssertionError(f"os.path on a cloud path: {args}")

    for name in ("exists", "isdir", "abspath", "expanduser"):
        monkeypatch.setattr(os.path, name, no_os_path)
    assert _paths.unwritable_reason(f"{root}/a_file") == f"{root}/a_file is a file"


def test_local_model_dir_is_refused_on_a_multi_host_slice() -> None:
    reason = _paths.local_model_dir_on_slice_reason("/tmp/run", num_hosts=4)
    assert "4 hosts" in reason and "model_dir='/tmp/run'" in reason and "\n" not in reason
    assert "model_dir=None" in _paths.local_model_dir_on_slice_reason(None, num_hosts=2)
    assert _paths.local_model_dir_on_slice_reason(GS_RUN, num_hosts=4) is None
    assert _paths.local_model_dir_on_slice_reason("/tmp/run", num_hosts=1) is None


class _FakeTPUStrategy(tf.distribute.TPUStrategy):
    """A TPUStrategy type for isinstance, built without a TPU."""

    def __init__(self, num_hosts: int) -> None:  # noqa: D107 - no super(): there is no TPU.
        self._extended = type("Extended", (), {"num_hosts": num_hosts, "should_checkpoint": False})()

    @property
    def extended(self):
        return self._extended


@pytest.mark.parametrize("model_dir", ["/tmp/local-run", None], ids=["local", "default"])
def test_train_refuses_a_local_model_dir_on_a_multi_host_slice_in_one_line(
        model_dir, monkeypatch, capsys) -> None:
    monkeypatch.setattr(strategies, "build", lambda config: _FakeTPUStrategy(num_hosts=4))
    monkeypatch.setattr(_job, "run", lambda *a, **k: pytest.fail("trained with a local model_dir on a slice"))
    argv = ["--strategy=one_device"] + ([f"--model_dir={model_dir}"] if model_dir else [])
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch.train: error: --model_dir must be shared storage")
    assert f"model_dir={model_dir!r}" in err


def test_train_accepts_a_cloud_model_dir_on_a_multi_host_slice(fake_gcs, monkeypatch) -> None:
    monkeypatch.setattr(strategies, "build", lambda config: _FakeTPUStrategy(num_hosts=4))
    ran = []
    monkeypatch.setattr(_job, "run", lambda job, strategy: ran.append(job.model_dir) or {})
    monkeypatch.setattr(_data, "check_available", lambda name, data_dir: None)
    assert run_main([f"--model_dir={GS_RUN}"]) == 0
    assert ran == [GS_RUN]


def test_tfds_path_layer_keeps_a_ram_path_whole() -> None:
    from etils import epath

    _data.register_tf_file_systems()
    root = f"ram://epath-{uuid.uuid4().hex}"
    path = epath.Path(f"{root}/tfds/digits")
    assert str(path) == f"{root}/tfds/digits" and str(path.parent) == f"{root}/tfds"
    assert str(path / "1.0.0") == f"{root}/tfds/digits/1.0.0"
    (path / "1.0.0").mkdir(parents=True)
    (path / "1.0.0" / "f").write_text("x")
    assert tf.io.gfile.exists(f"{root}/tfds/digits/1.0.0/f") and not os.path.exists("ram:")
    (path / "1.0.0").rename(f"{root}/tfds/digits/2.0.0")  # TFDS's incomplete-dir rename.
    assert (path / "2.0.0" / "f").read_text() == "x"


# --- gs:// reaches TFDS, the checkpointer and TensorBoard unchanged -----------------------------


@pytest.fixture
def fake_gcs(monkeypatch):
    """tf.io.gfile answers for gs:// from a dict instead of the network; records every gs:// path."""
    seen: list[str] = []
    real = {name: getattr(tf.io.gfile, name) for name in ("exists", "isdir", "makedirs")}

    def fake(name, answer):
        def call(path, *args, **kwargs):
            if str(path).startswith("gs://"):
                seen.append(str(path))
                return answer
            return real[name](path, *args, **kwargs)
        return call

    monkeypatch.setattr(tf.io.gfile, "exists", fake("exists", True))
    monkeypatch.setattr(tf.io.gfile, "isdir", fake("isdir", True))
    monkeypatch.setattr(tf.io.gfile, "makedirs", fake("makedirs", None))
    return seen


def test_gs_data_dir_reaches_tfds_unchanged(fake_gcs, digits_dir, monkeypatch) -> None:
    local = _data.prepare("digits", digits_dir)  # The real builder's info, to hand back.
    builder_calls, load_calls = [], []
    real_builder = tfds.builder

    def spy_builder(name, data_dir=None, **kwargs):
        builder_calls.append(data_dir)
        return real_builder(name, data_dir=digits_dir, **kwargs)

    def spy_load(name, *, data_dir=None, **kwargs):
        load_calls.append(data_dir)
        raise _Reached

    monkeypatch.setattr(tfds, "builder", spy_builder)
    monkeypatch.setattr(tfds, "load", spy_load)
    data = _data.prepare("digits", GS_DATA)
    assert builder_calls and set(builder_calls) == {GS_DATA}
    assert data.data_dir == GS_DATA and data.num_examples == local.num_examples
    with pytest.raises(_Reached):
        data.load("train")
    assert load_calls == [GS_DATA]
    assert not os.path.exists("gs:") and not os.path.exists(os.path.join(os.getcwd(), "gs:"))


def _compiled_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_gs_model_dir_reaches_the_checkpoint_manager_unchanged(monkeypatch) -> None:
    directories = []

    def spy(self, checkpoint, directory, *args, **kwargs):
        directories.append(directory)
        raise _Reached

    monkeypatch.setattr(tf.train.CheckpointManager, "__init__", spy)
    model = _compiled_model()
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(_Reached):
        _checkpointing.Checkpointer(model, tf.distribute.get_strategy(), GS_RUN)
    assert directories == [f"{GS_RUN}/{_checkpointing.CHECKPOINT_SUBDIR}"]


def test_gs_model_dir_reaches_fit_s_checkpointer_and_tensorboard_unchanged(fake_gcs, monkeypatch) -> None:
    got = {}

    class SpyCheckpointer:
        def __init__(self, model, strategy, model_dir):
            got["checkpointer"] = model_dir

        def restore(self):
            return None

    def spy_tensorboard(log_dir, **kwargs):
        got["tensorboard"] = log_dir
        raise _Reached

    monkeypatch.setattr(_checkpointing, "Checkpointer", SpyCheckpointer)
    monkeypatch.setattr(keras.callbacks, "TensorBoard", spy_tensorboard)
    data = tf.data.Dataset.from_tensor_slices((tf.zeros([4, 3]), tf.zeros([4, 2]))).batch(2)
    with pytest.raises(_Reached):
        strategies.fit(_compiled_model, data, strategy=tf.distribute.get_strategy(), epochs=1,
                       model_dir=GS_RUN, verbose=0)
    assert got == {"checkpointer": GS_RUN, "tensorboard": f"{GS_RUN}/{_run_directory.LOGS_SUBDIR}"}
    assert GS_RUN in fake_gcs  # makedirs went through tf.io.gfile, with the path as given.


# --- ram:// end to end, in one process ----------------------------------------------------------


def _local_files(*roots: str) -> list[str]:
    return sorted(os.path.join(d, f) for root in roots for d, _, files in os.walk(root) for f in files)


@pytest.mark.slow
def test_ram_data_dir_and_model_dir_end_to_end_write_nothing_locally(tmp_path, monkeypatch, capsys) -> None:
    """Prepare digits in ram://, train, checkpoint, then resume from ram://; nothing on the local disk."""
    work, home, temp, caches = (tmp_path / d for d in ("work", "home", "tmp", "caches"))
    for d in (work, home, temp, caches):
        d.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))  # TFDS's default data_dir is ~/tensorflow_datasets.
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(temp))
    # Library caches (Matplotlib's font list, Keras' config) are not this run's output.
    monkeypatch.setenv("MPLCONFIGDIR", str(caches))
    monkeypatch.setenv("KERAS_HOME", str(caches))
    root = f"ram://e2e-{uuid.uuid4().hex}"
    data_dir, model_dir = f"{root}/tfds", f"{root}/run"
    common = ["--model=mlp", "--steps_per_epoch=3", f"--data_dir={data_dir}", f"--model_dir={model_dir}"]

    assert run_main([*common, "--epochs=1"]) == 0, capsys.readouterr().err
    assert tf.io.gfile.isdir(f"{data_dir}/digits")
    checkpoints = tf.io.gfile.listdir(f"{model_dir}/{_checkpointing.CHECKPOINT_SUBDIR}")
    assert any(name.startswith("ckpt-") for name in checkpoints), checkpoints
    assert tf.io.gfile.listdir(f"{model_dir}/{_run_directory.LOGS_SUBDIR}")  # TensorBoard's event files.

    assert run_main([*common, "--epochs=2"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "Resuming from ram://" in out and "at epoch 2" in out, out
    with tf.io.gfile.GFile(f"{model_dir}/summary.json") as f:
        summary = json.load(f)
    assert summary["dataset"]["data_dir"] == data_dir and summary["model_dir"] == model_dir
    assert summary["steps"] == 6 and len(summary["history"]["loss"]) == 2
    assert summary["versions"] == {"tensorflow": tf.__version__, "keras": keras.__version__}
    assert tf.io.gfile.exists(f"{model_dir}/model.keras")

    assert _local_files(str(work), str(home), str(temp)) == []
    assert not os.path.exists(os.path.join(str(work), "ram:"))


# --- the benches' and device_check's outputs ------------------------------------------------------


def test_output_helpers_write_cloud_paths_through_gfile_only(tmp_path, monkeypatch) -> None:
    root = f"ram://out-{uuid.uuid4().hex}"
    monkeypatch.chdir(tmp_path)
    assert _paths.makedirs(f"{root}/a") == f"{root}/a" and tf.io.gfile.isdir(f"{root}/a")
    assert _paths.write_text(f"{root}/b/report.json", '{"x": 1}') == f"{root}/b/report.json"
    assert _paths.write_text(f"{root}/b/log", b"\x00\x01") == f"{root}/b/log"
    with _paths.staged(f"{root}/c/plot.png") as local:
        assert not _paths.is_cloud(local)
        with open(local, "wb") as f:
            f.write(b"\x89PNG")
    with tf.io.gfile.GFile(f"{root}/c/plot.png", "rb") as f:
        assert f.read() == b"\x89PNG"
    assert not os.path.exists(local)  # The staging copy is gone.
    with tf.io.gfile.GFile(f"{root}/b/report.json") as f:
        assert json.load(f) == {"x": 1}
    assert os.listdir(tmp_path) == []


def test_bench_optimizers_writes_its_outputs_to_a_cloud_output_dir(tmp_path, monkeypatch) -> None:
    from tests.launch.test_bench_optimizers import run_bench

    monkeypatch.chdir(tmp_path)
    output_dir = f"ram://bench-{uuid.uuid4().hex}/out"
    argv = ["--sizes=1K", "--optimizers=sgd", "--nokeras", "--xla=off", "--timed_steps=1", "--warmup=0",
            "--noisolate", f"--output_dir={output_dir}"]
    assert run_bench(argv) == 0
    assert sorted(tf.io.gfile.listdir(output_dir)) == ["optimizers.json", "optimizers.md", "optimizers.png"]
    assert os.listdir(tmp_path) == []
