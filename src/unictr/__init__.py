"""unictr: one unified multi-surface ads engagement model."""

__version__ = "0.1.0"
