"""Public activations of keras_research."""

__all__ = []
