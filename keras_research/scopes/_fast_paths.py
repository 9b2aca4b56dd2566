"""Keras layers computing with a factorized weight without forming it.

For a layer holding a `FactorizedWeight` (and neither LoRA nor
quantization enabled), the factorized subclass of

- `Dense` computes `(x @ left) @ right` with `_low_rank.low_rank_dense`,
  the same function as `keras_research.layers.FactorizedDense`;
- `Embedding` computes `take(left, ids) @ right` (gradients stay sparse
  rows of `left`);
- `Conv2D` / `Conv3D` compute `conv(x, reshape(left)) @ right` over the
  channels.

Any other case falls through to Keras's own `call`. The weights are read
through the layers' public `kernel` / `embeddings` properties.
"""

import keras
from keras import ops

from keras_research import _low_rank
from keras_research.scopes._factorized_weight import FactorizedWeight


def _plain(layer):
    return not layer.lora_enabled and layer.quantization_mode is None


def _dense_call(self, inputs, training=None):
    if _plain(self) and isinstance(self.kernel, FactorizedWeight):
        kernel = self.kernel
        return _low_rank.low_rank_dense(
            inputs, kernel.left, kernel.right, self.bias, self.activation
        )
    return keras.layers.Dense.call(self, inputs, training=training)


def _embedding_call(self, inputs):
    if _plain(self) and isinstance(self.embeddings, FactorizedWeight):
        table = self.embeddings
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = ops.cast(inputs, "int32")
        outputs = ops.matmul(
            ops.take(table.left, inputs, axis=0), table.right
        )
        return ops.cast(outputs, dtype=self.compute_dtype)
    return keras.layers.Embedding.call(self, inputs)


def _conv_op(self, inputs, kernel):
    if isinstance(kernel, FactorizedWeight) and self.groups == 1:
        # conv(x, reshape(L @ R)) == conv(x, reshape(L)) @ R over channels.
        left = ops.reshape(kernel.left, kernel.shape[:-1] + (kernel.rank,))
        y = keras.layers.Conv2D.convolution_op(self, inputs, left)
        if self.data_format == "channels_last":
            return ops.matmul(y, kernel.right)
        y = ops.matmul(ops.moveaxis(y, 1, -1), kernel.right)
        return ops.moveaxis(y, -1, 1)
    return keras.layers.Conv2D.convolution_op(self, inputs, kernel)


def overrides(original):
    """The methods the factorized subclass of `original` replaces."""
    if original.call is keras.layers.Dense.call:
        return {"call": _dense_call}
    if original.call is keras.layers.Embedding.call:
        return {"call": _embedding_call}
    if (
        original.call is keras.layers.Conv2D.call
        and original.convolution_op is keras.layers.Conv2D.convolution_op
    ):
        # Conv2D and Conv3D (Conv1D calls `ops.conv` itself).
        return {"convolution_op": _conv_op}
    return {}
