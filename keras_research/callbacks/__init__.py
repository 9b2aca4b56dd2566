"""Public callbacks of keras_research."""

__all__ = []
