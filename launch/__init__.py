"""absl entry points: ``python -m launch.train``, ``launch.local_cluster``, ``launch.tpu_vm``,
``launch.device_check`` and the benchmarks under ``launch.bench``.

The one place that quiets TensorFlow's C++ logs (INFO and WARNING) for every
entry point: ``python -m launch.X`` and the console scripts import this package
before the entry point's own module, so this runs before anything imports
TensorFlow. An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment wins.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
