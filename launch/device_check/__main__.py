"""``python -m launch.device_check``: see the package's docstring."""

from launch.device_check import run

if __name__ == "__main__":
    run()
