"""The one place keras_research asks whether XLA will compile the trace."""

import tensorflow as tf


def in_xla_context():
    """Whether the op being traced will be compiled by XLA.

    `tf.__internal__.get_enclosing_xla_context` is exported by TensorFlow
    (under `__internal__`, for Keras) and sees `jit_compile=True` functions,
    including Keras train/predict functions compiled with
    `model.compile(jit_compile=True)`. Components use it to pick ops that
    XLA can compile (for example, no sorted-segment kernels).
    """
    if tf.executing_eagerly():
        return False
    return tf.__internal__.get_enclosing_xla_context() is not None
