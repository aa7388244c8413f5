"""A cluster with a public IP address is refused in one line, unless the user acknowledges it.

TensorFlow's gRPC servers have no authentication (TensorFlow's SECURITY.md):
whoever reaches a task's port can run code in the job. Only validation runs
here; no traffic goes to any address.
"""

from __future__ import annotations

import json

import pytest

from strategies import StrategyConfig, StrategyError
from strategies.building import _config, _resolve

PUBLIC = ["8.8.8.8:2222", "1.2.3.4:2222", "[2001:4860:4860::8888]:2222"]
NOT_PUBLIC = ["10.0.0.2:2222", "172.16.5.4:2222", "192.168.1.7:2222", "127.0.0.1:2222",
              "169.254.1.1:2222", "100.64.0.1:2222", "[::1]:2222", "[fd00::1]:2222",
              "worker-0.example.com:2222", "localhost:2222", "node17:2222"]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_ip_literals_are_public(address):
    assert _config.public_ip(address) == address.rpartition(":")[0].strip("[]")


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_private_loopback_and_hostnames_are_not(address):
    assert _config.public_ip(address) is None


def _tf_config(workers):
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}})}


@pytest.mark.parametrize("public", PUBLIC)
def test_tf_config_with_a_public_address_is_refused(public):
    with pytest.raises(StrategyError) as info:
        _resolve.resolve(StrategyConfig(strategy="multi_worker_mirrored"),
                         _tf_config(["10.0.0.1:2222", public]))
    message = str(info.value)
    assert "\n" not in message
    assert "TF_CONFIG['cluster']['worker'][1]" in message and public in message
    assert "--allow_public_addresses" in message


def test_host_flags_with_a_public_address_are_refused():
    config = StrategyConfig(strategy="parameter_server", chief_host="10.0.0.1:2222",
                            worker_hosts=["10.0.0.2:2222"], ps_hosts=["10.0.0.3:2222", "8.8.4.4:2222"],
                            task_type="chief", task_index=0)
    with pytest.raises(StrategyError, match=r"`ps_hosts\[1\]` is the public IP address '8\.8\.4\.4:2222'"):
        _resolve.resolve(config, {})


def test_the_acknowledgement_accepts_them():
    config = StrategyConfig(strategy="multi_worker_mirrored", allow_public_addresses=True)
    found = _resolve.resolve(config, _tf_config(["10.0.0.1:2222", "8.8.8.8:2222"]))
    assert found.spec == {"worker": ["10.0.0.1:2222", "8.8.8.8:2222"]}


def test_private_clusters_and_hostnames_pass():
    found = _resolve.resolve(StrategyConfig(strategy="multi_worker_mirrored"),
                             _tf_config(["10.0.0.1:2222", "worker-1.example.com:2222"]))
    assert found.task == ("worker", 0)


def test_the_option_must_be_a_bool():
    with pytest.raises(StrategyError, match="allow_public_addresses"):
        StrategyConfig(allow_public_addresses="yes")


def test_the_flag_reaches_the_config():
    from strategies import flags as strategy_flags

    parse = strategy_flags.parse_notebook_flags
    assert parse(["kernel", "--allow_public_addresses", "-f", "k.json"]).allow_public_addresses is True
    assert parse(["kernel", "--noallow_public_addresses"]).allow_public_addresses is False
    assert parse(["kernel"]).allow_public_addresses is False
