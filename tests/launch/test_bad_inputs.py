"""Bad-input sweep: every bad input to launch.train and launch.local_cluster exits 2, in one line.

Each case must end with exit status 2 and exactly one stderr line that names
the offending flag, variable or file; no traceback; and no file that was in
``--model_dir`` (a directory holding a real earlier run) changed or removed.

Lines in TensorFlow's C++ / absl log format (``E0000 00:00:... file.cc:52]``)
are not counted as the error line: TensorFlow prints them when it initializes
devices, whatever the launcher does.

Cost: ``launch.train`` cases all run in ONE driver process
(``_bad_inputs_driver.py``), through ``launch.train.run(argv)`` (absl's
``app.run``, the real flag parser and ``main``), so TensorFlow is imported
once. ``launch.local_cluster`` imports no TensorFlow, so its cases are real
``python -m launch.local_cluster`` processes.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A real earlier run in --model_dir (mlp, Adam, cosine schedule, 1 of 2
# epochs done), made by the driver under Mirrored over 2 virtual CPUs, which
# also splits the driver's CPU, so the virtual_cpus=2 cases can run.
SETUP = ["--model=mlp", "--optimizer=adam", "--epochs=1", "--steps_per_epoch=2", "--data_dir={data}",
         "--model_dir={model_dir}", "--strategy=mirrored", "--virtual_cpus=2"]  # fmt: skip
# Every case continues that run (epoch 2), unless its flags make it another
# run; a case that gets past its bad input would train and write checkpoints.
BASE = ["--model=mlp", "--optimizer=adam", "--epochs=2", "--steps_per_epoch=2", "--data_dir={data}",
        "--model_dir={model_dir}", "--cluster_timeout=1"]  # fmt: skip

MWMS = ["--strategy=multi_worker_mirrored", "--task_type=worker"]
PS = ["--strategy=parameter_server"]


def _tf_config(cluster: object, task: object) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}


TWO_WORKERS = {"worker": ["127.0.0.1:{port0}", "127.0.0.1:{port1}"]}

# (id, program, argv, env, names): the one stderr line must contain one of `names`.
CASES = [
    # --- launch.train flags: unknown values ---
    ("model-unknown", "train", ["--model=transformer"], {}, ["model"]),
    ("optimizer-unknown", "train", ["--optimizer=adamx"], {}, ["optimizer"]),
    ("optimizer-wrapper-needs-inner", "train", ["--optimizer=lookahead"], {}, ["optimizer", "lookahead"]),
    ("strategy-unknown", "train", ["--strategy=horovod"], {}, ["strategy"]),
    ("lr-schedule-unknown", "train", ["--lr_schedule=linear"], {}, ["lr_schedule"]),
    ("mixed-precision-unknown", "train", ["--mixed_precision=float8"], {}, ["mixed_precision"]),
    ("all-reduce-unknown", "train", ["--all_reduce=butterfly"], {}, ["all_reduce"]),
    ("task-type-unknown", "train", ["--task_type=master"], {}, ["task_type"]),
    ("flag-misspelled", "train", ["--learnig_rate=0.1"], {}, ["learnig_rate"]),
    ("positional-argument", "train", ["mnist"], {}, ["mnist"]),
    ("batch-size-not-int", "train", ["--batch_size=32x"], {}, ["batch_size"]),
    ("learning-rate-not-float", "train", ["--learning_rate=fast"], {}, ["learning_rate"]),
    # --- launch.train flags: out-of-range numbers ---
    ("batch-size-zero", "train", ["--batch_size=0"], {}, ["batch_size"]),
    ("batch-size-negative", "train", ["--batch_size=-8"], {}, ["batch_size"]),
    ("epochs-zero", "train", ["--epochs=0"], {}, ["epochs"]),
    ("steps-per-epoch-zero", "train", ["--steps_per_epoch=0"], {}, ["steps_per_epoch"]),
    ("steps-per-execution-zero", "train", ["--steps_per_execution=0"], {}, ["steps_per_execution"]),
    ("learning-rate-negative", "train", ["--learning_rate=-0.1"], {}, ["learning_rate"]),
    ("learning-rate-zero", "train", ["--learning_rate=0"], {}, ["learning_rate"]),
    ("beta-1-one", "train", ["--beta_1=1.0"], {}, ["beta_1"]),
    ("beta-2-negative", "train", ["--beta_2=-0.5"], {}, ["beta_2"]),
    ("epsilon-negative", "train", ["--epsilon=-1e-7"], {}, ["epsilon"]),
    ("momentum-above-one", "train", ["--optimizer=sgd", "--momentum=1.5"], {}, ["momentum"]),
    ("weight-decay-negative", "train", ["--optimizer=adamw", "--weight_decay=-0.01"], {}, ["weight_decay"]),
    ("global-clipnorm-negative", "train", ["--global_clipnorm=-1"], {}, ["global_clipnorm"]),
    ("warmup-steps-negative", "train", ["--warmup_steps=-1"], {}, ["warmup_steps"]),
    ("virtual-cpus-negative", "train", ["--virtual_cpus=-2"], {}, ["virtual_cpus"]),
    ("num-gpus-zero", "train", ["--strategy=mirrored", "--num_gpus=0"], {}, ["num_gpus"]),
    ("task-index-negative", "train", ["--task_index=-1"], {}, ["task_index"]),
    ("cluster-timeout-negative", "train", ["--cluster_timeout=-5"], {}, ["cluster_timeout"]),
    ("worker-port-out-of-range", "train", [*MWMS, "--task_index=0", "--worker_hosts=127.0.0.1:70000"], {},
     ["worker_hosts"]),
    ("device-does-not-exist", "train", ["--strategy=one_device", "--device=/gpu:3"], {}, ["device"]),
    # --- launch.train flags: contradictory combinations ---
    ("momentum-with-adam", "train", ["--optimizer=adam", "--momentum=0.9"], {}, ["momentum"]),
    ("warmup-with-cosine", "train", ["--lr_schedule=cosine", "--warmup_steps=10"], {}, ["warmup_steps"]),
    ("warmup-cosine-without-warmup", "train", ["--lr_schedule=warmup_cosine"], {}, ["warmup_steps"]),
    ("warmup-longer-than-run", "train", ["--lr_schedule=warmup_cosine", "--warmup_steps=1000"], {},
     ["warmup_steps"]),
    ("virtual-cpus-with-one-device", "train", ["--strategy=one_device", "--virtual_cpus=2"], {}, ["virtual_cpus"]),
    ("tpu-with-mirrored", "train", ["--strategy=mirrored", "--tpu=local"], {}, ["tpu"]),
    ("task-index-without-hosts", "train", ["--task_index=0"], {}, ["task_index"]),
    ("ps-without-chief", "train", [*PS, "--worker_hosts=127.0.0.1:{port0}", "--ps_hosts=127.0.0.1:{port1}",
                                   "--task_type=worker", "--task_index=0"], {}, ["chief_host"]),
    ("task-index-beyond-hosts", "train", [*MWMS, "--task_index=5",
                                          "--worker_hosts=127.0.0.1:{port0},127.0.0.1:{port1}"], {},
     ["task_index"]),
    ("duplicate-worker-hosts", "train", [*MWMS, "--task_index=0",
                                         "--worker_hosts=127.0.0.1:{port0},127.0.0.1:{port0}"], {},
     ["worker_hosts"]),
    ("nccl-on-cpus", "train", ["--strategy=mirrored", "--virtual_cpus=2", "--all_reduce=nccl"], {},
     ["all_reduce"]),
    ("batch-not-divisible-by-replicas", "train", ["--strategy=mirrored", "--virtual_cpus=2", "--batch_size=33"],
     {}, ["batch_size"]),
    # --- TF_CONFIG ---
    ("tf-config-not-json", "train", [], {"TF_CONFIG": '{"cluster": {"worker": ['}, ["TF_CONFIG"]),
    ("tf-config-not-an-object", "train", [], {"TF_CONFIG": "[1, 2]"}, ["TF_CONFIG"]),
    ("tf-config-index-out-of-range", "train", [], _tf_config(TWO_WORKERS, {"type": "worker", "index": 2}),
     ["TF_CONFIG"]),
    ("tf-config-unknown-job", "train", [], _tf_config({"trainer": ["127.0.0.1:{port0}"]},
                                                      {"type": "trainer", "index": 0}), ["TF_CONFIG"]),
    ("tf-config-task-not-in-cluster", "train", [], _tf_config(TWO_WORKERS, {"type": "chief", "index": 0}),
     ["TF_CONFIG"]),
    ("tf-config-address-without-port", "train", [], _tf_config({"worker": ["127.0.0.1"]},
                                                               {"type": "worker", "index": 0}), ["TF_CONFIG"]),
    ("tf-config-duplicate-address", "train", [],
     _tf_config({"worker": ["127.0.0.1:{port0}", "127.0.0.1:{port0}"]}, {"type": "worker", "index": 0}),
     ["TF_CONFIG"]),
    ("tf-config-peer-never-comes", "train", [], _tf_config(TWO_WORKERS, {"type": "worker", "index": 0}),
     ["worker 1", "cluster_timeout"]),
    # --- --data_dir contents ---
    ("dataset-unknown", "train", ["--dataset=no_such_dataset"], {}, ["dataset"]),
    ("dataset-not-prepared-offline", "train", ["--dataset=mnist", "--data_dir={empty}"], {}, ["mnist"]),
    ("data-dir-is-a-file", "train", ["--data_dir={file}"], {}, ["data_dir", "{file}"]),
    ("data-info-corrupt", "train", ["--data_dir={bad_info}"], {}, ["data_dir", "{bad_info}"]),
    ("data-records-truncated", "train", ["--data_dir={truncated}"], {}, ["data_dir", "{truncated}"]),
    ("data-records-missing", "train", ["--data_dir={no_records}"], {}, ["data_dir", "{no_records}"]),
    ("data-records-of-another-dataset", "train", ["--data_dir={foreign_records}"], {},
     ["data_dir", "{foreign_records}"]),
    # --- --model_dir ---
    ("model-dir-is-a-file", "train", ["--model_dir={file}"], {}, ["model_dir", "{file}"]),
    ("model-dir-under-a-file", "train", ["--model_dir={file}/run"], {}, ["model_dir", "{file}"]),
    ("model-dir-holds-another-model", "train", ["--model=cnn"], {}, ["model_dir", "{model_dir}"]),
    ("model-dir-holds-another-optimizer", "train", ["--optimizer=sgd", "--momentum=0.9"], {},
     ["model_dir", "{model_dir}"]),
    # A constant learning rate is an optimizer variable, a schedule is not: the
    # optimizer's variables no longer line up with the checkpoint's.
    ("model-dir-holds-another-lr-schedule", "train", ["--lr_schedule=constant"], {},
     ["model_dir", "{model_dir}"]),
    # --- issue 11: found by hand, then by the fuzzer (test_fuzz_inputs.py) ---
    ("seed-negative", "train", ["--seed=-1"], {}, ["seed"]),
    ("seed-beyond-uint32", "train", ["--seed=4294967296"], {}, ["seed"]),
    ("learning-rate-inf", "train", ["--learning_rate=inf"], {}, ["learning_rate"]),
    ("weight-decay-nan", "train", ["--optimizer=adamw", "--weight_decay=nan"], {}, ["weight_decay"]),
    ("batch-size-beyond-int32", "train", ["--batch_size=9223372036854775808"], {}, ["batch_size"]),
    ("data-dir-uncreatable", "train", ["--data_dir=/proc/1/tfopt/data"], {}, ["data_dir"]),
    ("data-dir-unwritable", "train", ["--data_dir=/proc/sys"], {}, ["data_dir"]),
    ("data-dir-name-too-long", "train", ["--data_dir={empty}/" + "x" * 300], {}, ["data_dir"]),
    ("model-dir-uncreatable", "train", ["--model_dir=/proc/1/tfopt/run"], {}, ["model_dir"]),
    ("lc-workers-huge", "local_cluster", ["--workers=100000", "--", "true"], {}, ["workers"]),
    ("lc-timeout-nan", "local_cluster", ["--timeout=nan", "--", "true"], {}, ["timeout"]),
    # --- launch.local_cluster ---
    ("lc-workers-zero", "local_cluster", ["--workers=0", "--", "true"], {}, ["workers"]),
    ("lc-workers-negative", "local_cluster", ["--workers=-1", "--", "true"], {}, ["workers"]),
    ("lc-workers-not-int", "local_cluster", ["--workers=two", "--", "true"], {}, ["workers"]),
    ("lc-ps-without-chief", "local_cluster", ["--ps=1", "--", "true"], {}, ["chief"]),
    ("lc-ps-negative", "local_cluster", ["--ps=-1", "--chief", "--", "true"], {}, ["ps"]),
    ("lc-timeout-negative", "local_cluster", ["--timeout=-1", "--", "true"], {}, ["timeout"]),
    ("lc-flag-unknown", "local_cluster", ["--worker=2", "--", "true"], {}, ["worker"]),
    ("lc-no-command", "local_cluster", ["--workers=2"], {}, ["--"]),
    ("lc-command-not-found", "local_cluster", ["--", "/nonexistent/tfopt-train"], {},
     ["/nonexistent/tfopt-train"]),
    ("lc-command-not-executable", "local_cluster", ["--", "{file}"], {}, ["{file}"]),
]

# Also run as a real `python -m launch.train` process: it reads TF_CONFIG and
# fails inside train(), so it goes through the whole entry point.
WITNESS = "tf-config-not-json"

# TensorFlow's C++ and absl's log lines: "E1122 00:00:00.000000  123 file.cc:52] ...".
_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ")


def make_fixtures(root: str) -> None:
    """Called by the driver after SETUP prepared ``{data}``: the broken data dirs."""
    import tensorflow as tf

    paths = _paths(Path(root))
    version = Path(paths["data"]) / "digits" / "1.0.0"
    for key in ("bad_info", "truncated", "no_records", "foreign_records"):
        shutil.copytree(paths["data"], paths[key])
    copy = {key: Path(paths[key]) / "digits" / "1.0.0" for key in paths}
    (copy["bad_info"] / "dataset_info.json").write_text('{"name": "digits", "splits": [')
    for record in version.glob("*.tfrecord-*"):
        data = record.read_bytes()
        (copy["truncated"] / record.name).write_bytes(data[: len(data) * 3 // 5])
        (copy["no_records"] / record.name).unlink()
        # Well-formed records of another dataset (text, no image) under digits' names.
        with tf.io.TFRecordWriter(str(copy["foreign_records"] / record.name)) as writer:
            for i in range(50):
                feature = {"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x" * i]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def _paths(root: Path) -> dict[str, str]:
    names = ["data", "model_dir", "empty", "file", "bad_info", "truncated", "no_records", "foreign_records"]
    return {name: str(root / name) for name in names}


def _ports() -> dict[str, str]:
    import portpicker

    return {"port0": str(portpicker.pick_unused_port()), "port1": str(portpicker.pick_unused_port())}


def _fill(value: object, values: dict[str, str]) -> object:
    if isinstance(value, str):
        for key, text in values.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def _run(module_argv: list[str], cwd: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Runs ``python -m MODULE ARGS...`` as a user would."""
    try:
        proc = subprocess.run([sys.executable, "-m", *module_argv], cwd=cwd, capture_output=True,
                              text=True, timeout=120, env={**_env(), **(env or {})})  # fmt: skip
    except subprocess.TimeoutExpired as e:
        return {"code": "timeout", "stderr": str(e.stderr), "changes": []}
    return {"code": proc.returncode, "stderr": proc.stderr, "changes": []}


def _case(id_: str) -> tuple:
    return next(case for case in CASES if case[0] == id_)


def train_cases_by_id(train_cases: list[dict]) -> dict[str, dict]:
    return {case["id"]: case for case in train_cases}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return run_sweep(tmp_path_factory.mktemp("bad_inputs"))


def run_sweep(root: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Runs every case once under ``root``; returns ``(results by id, placeholder values)``."""
    values = {**_paths(root), **_ports()}
    os.makedirs(values["empty"])
    Path(values["file"]).write_text("not a directory\n")
    os.makedirs(values["model_dir"])
    Path(values["model_dir"], "NOTES.txt").write_text("a user's file, never to be touched\n")
    train_cases = [{"id": id_, "argv": _fill([*BASE, *argv], values), "env": _fill(env, values)}
                   for id_, program, argv, env, _ in CASES if program == "train"]  # fmt: skip
    request = {
        "setup": [_fill(SETUP, values)],
        "fixtures": f"{__name__}:make_fixtures",
        "root": str(root),
        "cases": train_cases,
        "watch": [values["model_dir"]],
        "timeout": 60,  # The setup run trains; a loaded 2-core machine needs more than 30 s.
    }
    driver = [sys.executable, "-m", "tests.launch._bad_inputs_driver"]
    # The driver, the local_cluster processes and one real launch.train process
    # (the driver's witness, see test_driver_matches_a_real_process) run side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        driven = pool.submit(subprocess.run, driver, input=json.dumps(request), cwd=str(root),
                             capture_output=True, text=True, timeout=400, env=_env())  # fmt: skip
        witness = pool.submit(_run, ["launch.train", *train_cases_by_id(train_cases)[WITNESS]["argv"]],
                              str(root), env=_fill(_case(WITNESS)[3], values))  # fmt: skip
        clusters = {id_: pool.submit(_run, ["launch.local_cluster", *_fill(argv, values)], str(root))
                    for id_, program, argv, _, _ in CASES if program == "local_cluster"}  # fmt: skip
        proc = driven.result()
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(proc.stdout)
        setup = results["setup"][0]
        assert setup["code"] == 0, f"the setup run failed: {setup['stderr'][-3000:]}"
        assert os.listdir(values["model_dir"]) != ["NOTES.txt"], "the setup run wrote no checkpoint"
        cases = results["cases"]
        cases.update({id_: future.result() for id_, future in clusters.items()})
        cases["witness"] = witness.result()
    return cases, values


@pytest.mark.parametrize(("program", "argv", "env", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(sweep, request, program, argv, env, names):
    results, values = sweep
    result = results[request.node.callspec.id]
    stderr = result["stderr"]
    lines = [line for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    names = _fill(names, values)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert result["code"] == 2, f"exit {result['code']}; stderr:\n{stderr[-3000:]}"
    assert len(lines) == 1, f"{len(lines)} stderr lines, want 1:\n" + "\n".join(lines[-30:])
    assert any(name in lines[0] for name in names), f"{lines[0]!r} names none of {names}"
    lost = [c for c in result["changes"] if not c.startswith("created ")]
    assert lost == [], f"--model_dir was modified: {lost}"


def test_driver_matches_a_real_process(sweep):
    # The driver's shortcut must not change what a user sees: one case, both ways.
    results, _ = sweep
    real, driven = results["witness"], results[WITNESS]
    assert (real["code"], _last_line(real["stderr"])) == (driven["code"], _last_line(driven["stderr"]))


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
