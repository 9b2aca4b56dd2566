"""Public optimizers of keras_research."""

__all__ = []
