"""absl entry points: ``python -m launch.train``, ``launch.local_cluster``, ``launch.tpu_vm``, benchmarks."""
