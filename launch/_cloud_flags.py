"""The flags every cloud launcher shares: ``--name``, ``--project``, ``--execute``.

`launch.tpu_vm`, `launch.vertex` and `launch.kubernetes` each print what they
would create and, with ``--execute``, create it. Their flags of the same
meaning are defined here once, so that every entry point imports into one
process (absl refuses a flag defined twice) and reads the same way.
"""

from __future__ import annotations

from absl import flags

NAME = flags.DEFINE_string(
    "name", None, "Name of what is created, lowercase letters, digits and '-': the TPU VM "
    "(launch.tpu_vm, required) or the job (launch.vertex, launch.kubernetes; default tfopt-train).")
PROJECT = flags.DEFINE_string(
    "project", None, "GCP project (launch.tpu_vm: default gcloud's configured one; launch.vertex: "
    "needed by --execute).")
EXECUTE = flags.DEFINE_bool(
    "execute", False, "Create it (run the commands, submit the job, apply the manifest) instead of "
    "printing it.")
