"""The role mixes the launcher tests render, and the strict loader for OpenAPI-generated models."""

from __future__ import annotations

import re
import types
from typing import Any

from launch import _cluster_job

COMMAND = ("python", "-m", "launch.train", "--model_dir=gs://bucket/run", "--epochs=3")
IMAGE = "us-docker.pkg.dev/my-project/repo/trainer:v1"
# name -> make_job's shape keywords. Multi-worker mirrored (workers only, or
# with a chief), parameter servers, each with and without a side-car evaluator.
MIXES = {
    "mwms-workers": {"chief": False, "workers": 3},
    "mwms-one-worker": {"chief": False, "workers": 1},
    "mwms-evaluator": {"chief": False, "workers": 2, "evaluator": True},
    "chief-workers": {"chief": True, "workers": 2},
    "ps": {"chief": True, "workers": 2, "ps": 2},
    "ps-evaluator": {"chief": True, "workers": 2, "ps": 1, "evaluator": True},
}


def job(mix: str, **fields: Any) -> _cluster_job.ClusterJob:
    values: dict[str, Any] = {"name": "digits", "command": COMMAND, "image": IMAGE, **MIXES[mix]}
    values.update(fields)
    return _cluster_job.make_job(**values)


class UnknownField(AssertionError):
    pass


def strict_load(model: type, data: Any, modules: tuple[types.ModuleType, ...], path: str = "") -> None:
    """Checks ``data`` against an OpenAPI-generated model class, field by field.

    The generated clients (kubernetes, kubeflow-training) ignore a key they do
    not know when they deserialize; this raises `UnknownField` for it instead,
    and recurses through ``list[...]``, ``dict(str, ...)`` and nested models.
    """
    if not isinstance(data, dict):
        raise UnknownField(f"{path or '<root>'}: expected an object for {model.__name__}, got {data!r}")
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, value in data.items():
        if key not in by_json:
            raise UnknownField(f"{path}.{key}: not a field of {model.__name__} "
                               f"(it has {sorted(by_json)})")
        _check_type(model.openapi_types[by_json[key]], value, modules, f"{path}.{key}")


def _check_type(kind: str, value: Any, modules, path: str) -> None:
    if value is None:
        return
    if match := re.fullmatch(r"list\[(.+)\]", kind):
        assert isinstance(value, list), f"{path}: expected a list, got {value!r}"
        for i, item in enumerate(value):
            _check_type(match[1], item, modules, f"{path}[{i}]")
    elif match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        assert isinstance(value, dict), f"{path}: expected an object, got {value!r}"
        for key, item in value.items():
            _check_type(match[1], item, modules, f"{path}.{key}")
    elif kind in ("str", "int", "bool", "float", "object", "datetime"):
        expected = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
                    "datetime": str}[kind]
        assert isinstance(value, expected), f"{path}: expected {kind}, got {value!r}"
    else:
        model = next((getattr(m, kind) for m in modules if hasattr(m, kind)), None)
        assert model is not None, f"{path}: no model class {kind}"
        strict_load(model, value, modules, path)
