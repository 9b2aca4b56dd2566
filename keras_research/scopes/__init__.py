"""Public scopes of keras_research."""

__all__ = []
