"""keras-io `vae`, small (a few random 28x28 images), with the swaps.

The script's `VAE` model trains with its own `train_step` (a
`GradientTape` over its own losses, never `compute_loss`): the encoder and
decoder are built with a keras_research activation, trained a few steps
with keras_research's Adam, saved and reloaded in a fresh process.
`JacobianRegularizer` refuses such a train step with its documented error.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import keras_research
from keras_research.callbacks import JacobianRegularizer
from tests.integration._helpers import factorized
from tests.integration._keras_io_layers import Sampling

LATENT_DIM = 2
IMAGE = 28
ACTIVATION = "keras_research>silu"


def encoder_and_decoder():
    encoder_inputs = keras.Input(shape=(IMAGE, IMAGE, 1))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(
        encoder_inputs
    )
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation=ACTIVATION)(x)
    z_mean = layers.Dense(LATENT_DIM, name="z_mean")(x)
    z_log_var = layers.Dense(LATENT_DIM, name="z_log_var")(x)
    z = Sampling()([z_mean, z_log_var])
    encoder = keras.Model(
        encoder_inputs, [z_mean, z_log_var, z], name="encoder"
    )

    latent_inputs = keras.Input(shape=(LATENT_DIM,))
    x = layers.Dense(7 * 7 * 64, activation=ACTIVATION, name="latent")(
        latent_inputs
    )
    x = layers.Reshape((7, 7, 64))(x)
    x = layers.Conv2DTranspose(
        64, 3, activation="relu", strides=2, padding="same"
    )(x)
    x = layers.Conv2DTranspose(
        32, 3, activation="relu", strides=2, padding="same"
    )(x)
    decoder_outputs = layers.Conv2DTranspose(
        1, 3, activation="sigmoid", padding="same"
    )(x)
    decoder = keras.Model(latent_inputs, decoder_outputs, name="decoder")
    return encoder, decoder


class VAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")

    @property
    def metrics(self):
        return [self.total_loss_tracker]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = self.encoder(data)
            reconstruction = self.decoder(z)
            reconstruction_loss = ops.mean(
                ops.sum(
                    keras.losses.binary_crossentropy(data, reconstruction),
                    axis=(1, 2),
                )
            )
            kl_loss = -0.5 * (
                1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)
            )
            kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        return {"loss": self.total_loss_tracker.result()}


def _images(n=16):
    return (
        np.random.default_rng(0).random((n, IMAGE, IMAGE, 1)).astype("float32")
    )


def _vae(encoder, decoder):
    vae = VAE(encoder, decoder)
    vae.compile(optimizer=keras_research.optimizers.Adam(1e-3))
    return vae


def test_vae_custom_train_step_saves_encoder_and_decoder(save_and_reload):
    images = _images()
    encoder, decoder = encoder_and_decoder()
    assert decoder.get_layer("latent").activation is (
        keras_research.activations.silu
    )
    before = np.array(decoder.get_layer("latent").kernel)
    history = _vae(encoder, decoder).fit(
        images, epochs=1, batch_size=8, steps_per_epoch=2, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(before, decoder.get_layer("latent").kernel)
    # The encoder's third output samples: compare the deterministic ones.
    z_mean_encoder = keras.Model(encoder.inputs, encoder.outputs[0])
    save_and_reload(z_mean_encoder, images[:8], "vae_encoder")
    z = np.random.default_rng(1).normal(size=(8, LATENT_DIM))
    save_and_reload(decoder, z.astype("float32"), "vae_decoder")


@pytest.fixture(scope="module")
def refused_vae():
    """A VAE whose `fit` with a JacobianRegularizer was refused."""
    vae = _vae(*encoder_and_decoder())
    with pytest.raises(ValueError) as refusal:
        vae.fit(
            _images(),
            epochs=1,
            batch_size=8,
            steps_per_epoch=1,
            callbacks=[JacobianRegularizer(0.01)],
            verbose=0,
        )
    return vae, str(refusal.value)


def test_jacobian_regularizer_refuses_a_train_step_without_compute_loss(
    refused_vae,
):
    # The documented refusal: the penalty is added in `compute_loss`, which
    # this train step never calls.
    vae, message = refused_vae
    assert "but the train step of model 'vae' did not call it" in message, (
        message
    )
    assert "Custom train steps must call `self.compute_loss(" in message
    assert "train_step" not in vars(vae)
    assert "compute_loss" not in vars(vae)


def test_model_still_trains_after_the_refusal(refused_vae):
    vae, _ = refused_vae
    history = vae.fit(
        _images(), epochs=1, batch_size=8, steps_per_epoch=1, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))


def test_vae_under_factorized_scope_keeps_the_latent_full_rank(
    save_and_reload,
):
    with keras_research.factorized_scope(rank=0.25):
        encoder, decoder = encoder_and_decoder()
    assert "conv2d_transpose/kernel" in factorized(decoder)
    z = np.random.default_rng(1).normal(size=(8, LATENT_DIM))
    save_and_reload(decoder, z.astype("float32"), "vae_decoder_scope")
    # Dense(2 -> 3136) at rank 0.25 would keep one of the two latent axes.
    assert "latent/kernel" not in factorized(decoder), factorized(decoder)
