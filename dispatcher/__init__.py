"""dispatcher: an event-driven notification dispatcher for alerts that must never be lost."""

__version__ = "0.1.0"
__all__ = ["__version__"]
