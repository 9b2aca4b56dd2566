"""ClassProbabilities: a softmax that carries the names of the classes."""

import keras
import numpy as np
from keras import ops

from keras_research._export import register


@register
class ClassProbabilities(keras.layers.Layer):
    """Softmax over class logits that records the class names.

    The last layer of a classifier meant to be used outside the program
    that trained it: the saved model then carries its class names (in this
    layer's config), so nothing else needs to travel with the `.keras`
    file. `model.get_layer(name).class_names` gives them back after
    `keras.saving.load_model`, and `decode` turns probabilities into names.

    Args:
        class_names: list of str. The name of each class, in the order of
            the logits. At least one, all distinct.
        **kwargs: Base layer keyword arguments, such as `name`.

    Call arguments:
        inputs: float tensor of logits, last axis of size
            `len(class_names)`.

    Input shape:
        `(..., num_classes)`.

    Output shape:
        Same as the input; the values along the last axis sum to 1.

    Returns:
        The class probabilities, in the compute dtype.

    Raises:
        ValueError: if `class_names` is invalid, or the last axis of the
            input is not `len(class_names)`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import keras_research
    >>> layer = keras_research.layers.ClassProbabilities(["neg", "pos"])
    >>> probabilities = layer(np.array([[0.0, 2.0]], "float32"))
    >>> np.round(keras.ops.convert_to_numpy(probabilities), 3)
    array([[0.119, 0.881]], dtype=float32)
    >>> layer.decode(probabilities)
    ['pos']
    """

    def __init__(self, class_names, **kwargs):
        super().__init__(**kwargs)
        if isinstance(class_names, (tuple, np.ndarray)):
            class_names = list(class_names)
        if (
            not isinstance(class_names, list)
            or not class_names
            or not all(isinstance(n, str) for n in class_names)
            or len(set(class_names)) != len(class_names)
        ):
            raise ValueError(
                "`class_names` must be a non-empty list of distinct strings. "
                f"Received: class_names={class_names!r}"
            )
        self.class_names = tuple(class_names)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != len(
            self.class_names
        ):
            raise ValueError(
                f"The last axis of the input of ClassProbabilities must have "
                f"size len(class_names)={len(self.class_names)} (one logit "
                f"per class). Received: input_shape={input_shape}"
            )
        self.built = True

    def call(self, inputs):
        return ops.softmax(ops.cast(inputs, self.compute_dtype), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def decode(self, probabilities):
        """The name of the most probable class of each row, as a list."""
        best = np.argmax(ops.convert_to_numpy(probabilities), axis=-1)
        return [self.class_names[i] for i in np.ravel(best)]

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names)}
