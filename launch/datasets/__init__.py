"""TFDS dataset builders that ship with this project (registered on import)."""
