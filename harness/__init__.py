"""mailflow-harness: mail-flow scenarios against real MTAs and DNS in containers."""

__version__ = "0.1.0"
