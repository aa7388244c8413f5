"""strategies: build any tf.distribute strategy from flags, Python or the environment."""

__all__: list[str] = []
