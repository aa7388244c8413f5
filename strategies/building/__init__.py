"""The building half of `strategies`: a `StrategyConfig` in, a ``tf.distribute.Strategy`` out.

Flags, Python or the environment give a `StrategyConfig` (`_config`,
`strategies.flags`); `_detect` and `_resolve` read the hardware and
``TF_CONFIG``; `_factory.build` validates the config and calls the builder
registered under its name (`_registry`, `_builders`, `_cluster_builders`,
`_tpu`); `_server` runs the servers of a parameter-server cluster.

Its one output is the strategy object: that is the seam with
`strategies.training`, which this half never imports. The public names are
re-exported by `strategies`.
"""
