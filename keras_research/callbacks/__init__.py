"""Public callbacks of keras_research."""

from keras_research.callbacks.jacobian_regularizer import JacobianRegularizer

__all__ = ["JacobianRegularizer"]
