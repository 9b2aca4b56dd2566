"""Reusable conformance checks for layers, optimizers and saved models.

Keras's own `run_layer_test` is private; these are public so that users can
hold their own components to the same standard as ours.
"""

from keras_research.testing.run_layer_test import run_layer_test
from keras_research.testing.run_model_saving_test import run_model_saving_test
from keras_research.testing.run_optimizer_test import run_optimizer_test

__all__ = [
    "run_layer_test",
    "run_model_saving_test",
    "run_optimizer_test",
]
