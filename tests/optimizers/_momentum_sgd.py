"""A user optimizer written on the CustomOptimizer template, for tests.

The docstring's example, registered so that `.keras` files holding it load
with `safe_mode=True`. Shared by the optimizer and reliability tests.
"""

import keras
from keras import ops

from keras_research.optimizers import CustomOptimizer


@keras.saving.register_keras_serializable(package="keras_research_tests")
class MomentumSGD(CustomOptimizer):
    """Heavy-ball SGD written on the template (the docstring's example)."""

    def __init__(self, learning_rate=0.01, momentum=0.9, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = momentum

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for variable in var_list:
            self.add_slot(variable, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        velocity = self.get_slot(variable, "velocity")
        self.assign(velocity, self.momentum * velocity + gradient)
        self.assign_sub(variable, lr * velocity)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}
