"""Public optimizers of keras_research."""

from keras_research.optimizers.adam import Adam
from keras_research.optimizers.adan import Adan
from keras_research.optimizers.custom_optimizer import CustomOptimizer
from keras_research.optimizers.power_momentum import PowerMomentum

__all__ = ["Adam", "Adan", "CustomOptimizer", "PowerMomentum"]
