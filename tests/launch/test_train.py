"""launch.train end to end: outputs, strategies, remote datasets, and user errors (exit 2).

Most runs call the entry point in this process (``train.run(argv)``, absl and
all), which is ~5 s cheaper per run than a subprocess; two subprocess tests
check the real command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

import strategies
import tfopt
from launch import _data, _job, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--model=mlp", "--epochs=2"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Whatever machine runs the tests, remote datasets count as not downloadable.
    monkeypatch.setattr(_data, "network_reachable", lambda timeout=0: False)


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
    # strategies.build sets Keras' global dtype policy; leave it as found.
    policy = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(policy)


def run_main(argv: list[str]) -> int:
    """``python -m launch.train ARGV`` in this process; returns the exit status."""
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        try:
            train.run(["launch.train", *argv])
        except SystemExit as e:
            return 0 if e.code is None else int(e.code)
    return 0


def _summary(model_dir) -> dict:
    with open(os.path.join(model_dir, "summary.json")) as f:
        return json.load(f)


def test_run_writes_every_output(digits_dir, tmp_path, capsys) -> None:
    model_dir = str(tmp_path / "run")
    assert run_main([*SMALL, f"--data_dir={digits_dir}", f"--model_dir={model_dir}"]) == 0
    out = capsys.readouterr().out
    assert "eval accuracy" in out and model_dir in out

    summary = _summary(model_dir)
    assert summary["dataset"]["name"] == "digits" and summary["model"]["name"] == "mlp"
    assert summary["num_replicas"] == 1 and "DefaultStrategy" in summary["strategy"]
    assert summary["optimizer"]["name"] == "adam"
    assert summary["optimizer"]["config"]["learning_rate"]["class_name"] == "CosineDecay"
    assert summary["epochs"] == 2 and summary["steps"] == 2 * 45 == 2 * summary["steps_per_epoch"]
    assert summary["train_seconds"] > 0 and summary["examples_per_second"] > 0
    assert set(summary["train"]) == set(summary["eval"]) == {"accuracy", "loss"}
    assert len(summary["history"]["val_accuracy"]) == 2

    # The eval metrics are those of the saved model on the whole test split.
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), safe_mode=True)
    images, labels = _data.prepare("digits", digits_dir).read_arrays("test")
    accuracy = np.mean(np.argmax(model.predict(images, verbose=0), axis=-1) == labels)
    assert accuracy == pytest.approx(summary["eval"]["accuracy"], abs=1e-6)
    assert accuracy * 360 == pytest.approx(round(accuracy * 360))  # all 360, not a truncated epoch

    with open(os.path.join(model_dir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    events = tf.io.gfile.glob(os.path.join(model_dir, "logs", "*", "events.out.tfevents.*"))
    assert events, "no TensorBoard event files"


@pytest.mark.slow
def test_default_job_reaches_the_quality_bar(digits_dir, tmp_path) -> None:
    # The job `make train` runs (Job() defaults), on this machine's CPU.
    job = _job.Job(data_dir=digits_dir, model_dir=str(tmp_path / "run"))
    summary = _job.run(job, strategies.build("one_device"), verbose=0)
    assert summary["eval"]["accuracy"] >= 0.97


def test_mirrored_sgd_momentum(digits_dir, tmp_path) -> None:
    # The example; conftest already split the CPU into 2 devices.
    # reduce_to_one: two collective-all-reduce MirroredStrategy objects in one
    # process can collide (tensorflow/tensorflow#62790), and other test
    # modules build their own in this process.
    model_dir = str(tmp_path / "run")
    argv = ["--strategy=mirrored", "--virtual_cpus=2", "--all_reduce=reduce_to_one", "--optimizer=sgd", "--momentum=0.9",
            "--model=mlp", "--epochs=1", f"--data_dir={digits_dir}", f"--model_dir={model_dir}"]  # fmt: skip
    assert run_main(argv) == 0
    summary = _summary(model_dir)
    assert summary["num_replicas"] == 2 and "MirroredStrategy" in summary["strategy"]
    assert summary["optimizer"]["config"]["momentum"] == pytest.approx(0.9)
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0


def test_remote_dataset_through_mock_data(mocked, tmp_path) -> None:
    # cifar10's shape and classes, mocked records: the launcher's wiring for a
    # 3-channel TFDS dataset, with resnet_small and a fixed number of steps.
    model_dir = str(tmp_path / "run")
    argv = ["--dataset=cifar10", "--model=resnet_small", "--batch_size=8", "--epochs=1",
            "--steps_per_epoch=2", f"--data_dir={mocked.data_dir}", f"--model_dir={model_dir}"]  # fmt: skip
    with mocked("cifar10", num_examples=16):
        assert run_main(argv) == 0
    summary = _summary(model_dir)
    assert summary["dataset"]["input_shape"] == [32, 32, 3]
    assert summary["steps"] == 2 and summary["model"]["name"] == "resnet_small"


def test_default_model_dir_is_new_per_run_and_shared_by_a_cluster() -> None:
    local = _job.default_model_dir(tf.distribute.get_strategy(), "digits", "cnn")
    assert local.startswith(os.path.join("runs", "digits-cnn-2"))

    class Resolver:
        def __init__(self, task):
            self.task = task

        def cluster_spec(self):
            return tf.train.ClusterSpec({"worker": ["127.0.0.1:1", "127.0.0.1:2"]})

    class Worker:
        def __init__(self, task):
            self.cluster_resolver = Resolver(task)

    dirs = {_job.default_model_dir(Worker(i), "digits", "cnn") for i in range(2)}
    assert len(dirs) == 1 and dirs.pop().startswith(os.path.join("runs", "digits-cnn-cluster-"))


_NEEDS_OPTIMIZER = [name for name in tfopt.available() if name == "lookahead"]

BAD = [
    (["--model=vgg"], "model"),
    (["--epochs=0"], "epochs"),
    (["--learning_rate=-1"], "learning_rate"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["--optimizer=adamm"], "optimizer='adamm'"),
    (["--momentum=0.9"], "--momentum"),
    (["--beta_1=1.5"], "beta_1=1.5"),
    (["--weight_decay=-0.1"], "weight_decay"),
    (["--global_clipnorm=-1"], "global_clipnorm"),
    (["--warmup_steps=10"], "warmup_steps=10"),
    (["--lr_schedule=warmup_cosine"], "warmup_steps=0"),
    (["--strategy=mirrored", "--virtual_cpus=2", "--all_reduce=reduce_to_one", "--batch_size=33"],
     "batch_size=33"),
    (["--dataset=no_such_dataset"], "no_such_dataset"),
    (["--dataset=mnist"], "tfds build mnist"),
    (["--strategy=one_device", "--tpu=local"], "tpu"),
    (["positional"], "positional"),
    (["--model_dir={file}"], "--model_dir"),
    (["--model_dir={file}/run"], "--model_dir"),
    (["--data_dir={file}"], "--data_dir"),
    *[([f"--optimizer={name}"], name) for name in _NEEDS_OPTIMIZER],
]


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_user_error_exits_2_with_one_line(argv, named, tmp_path, digits_dir, capsys) -> None:
    data_dir = digits_dir if "--dataset=mnist" not in argv else str(tmp_path / "empty")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    argv = [arg.replace("{file}", str(a_file)) for arg in argv]
    code = run_main([*SMALL, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}", *argv])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "run" / "summary.json")


def test_an_unverified_keras_or_tensorflow_is_one_line(monkeypatch, capsys) -> None:
    # The version guard's refusal (strategies/compat) ends the run as a user error, not a traceback.
    import strategies

    def refuse() -> None:
        raise strategies.KerasCompatError("strategies.fit needs a workaround for keras#0, which was "
                                          "written and tested for keras 3.15 with tensorflow 2.21")

    monkeypatch.setattr(train, "train", refuse)
    code = run_main(SMALL)
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and "written and tested for keras 3.15" in errors[0], err
    assert "Traceback" not in err


def test_command_line_user_error(tmp_path) -> None:
    # The real CLI: absl parses, the error is one stderr line, the status is 2.
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", "--model=vgg"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and "--model=vgg" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.cluster
def test_local_multi_worker_run(digits_dir, tmp_path) -> None:
    # The multi-worker example, with 2 real worker processes on 127.0.0.1.
    model_dir = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "launch.local_cluster", "--workers=2", "--timeout=240", "--",
         sys.executable, "-m", "launch.train", "--strategy=multi_worker_mirrored", "--model=mlp",
         "--epochs=1", f"--data_dir={digits_dir}", f"--model_dir={model_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = _summary(model_dir)
    assert summary["num_replicas"] == 2 and "MultiWorkerMirroredStrategy" in summary["strategy"]
    # Each worker read its half of every global batch of 32: 45 steps cover the split.
    assert summary["steps"] == summary["steps_per_epoch"] == 45
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0


def test_summary_is_strict_json_and_extends_the_existing_file(tmp_path) -> None:
    from launch import _outputs

    (tmp_path / "summary.json").write_text(json.dumps({"validation": {"loss": 1.0}, "eval": {"loss": 9.0}}))
    _outputs.write_summary(str(tmp_path), {"eval": {"loss": np.float32(np.nan), "accuracy": np.float64(0.5)}})
    text = (tmp_path / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert summary == {"validation": {"loss": 1.0}, "eval": {"loss": "nan", "accuracy": 0.5}}
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]  # no temporary file left behind
