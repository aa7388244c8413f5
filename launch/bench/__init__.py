"""The benchmarks, each an absl entry point: ``python -m launch.bench.NAME``.

* `launch.bench.fit`: ``strategies.fit`` against plain ``model.fit``, step rate and wall time.
* `launch.bench.optimizers`: optimizer step time against a memory roof.
* `launch.bench.convergence`: steps to a target on the digits, per optimizer.
* `launch.bench.shampoo`: Shampoo's sharded preconditioner refresh against every replica's.
* `launch.bench.soap_split`: the same for SOAP's eigenbasis refresh.
* `launch.bench.crosscheck_shampoo`: ``tfopt.Shampoo`` against optax-shampoo.

Each reports ratios against a baseline measured in the same run, and records
the machine it ran on (`launch._provenance`).
"""
