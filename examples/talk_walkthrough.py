"""The TF Dev Summit 2020 talk "Research with TensorFlow", in today's API.

Each section states what the talk showed and measures it here, with
Keras 3 and `keras_research`:

1. Variable creator scopes: factorize the weights of library layers
   (`keras.layers.Dense`, `keras.layers.MultiHeadAttention`) without
   touching their code, with `keras_research.factorized_scope`.
2. Compilation for activation research: an odd research activation, op by
   op vs `keras_research.activations.fused` (one XLA kernel per pass).
3. Compilation for optimizer research: the talk's power-momentum optimizer,
   `keras_research.optimizers.PowerMomentum`, compiled vs op by op.
4. Jacobians: a Python loop of `tape.gradient` vs `tape.jacobian` /
   `tape.batch_jacobian` (vectorized with pfor).
5. Ragged tensors: a sentence embedding (vocabulary lookup, gather, ragged
   mean), with `keras_research.layers.RaggedEmbeddingBag`, vs padding.

Timings are medians of interleaved repetitions in this process, wall
clock; on a shared or small machine read the ratios, not the milliseconds.

Usage:

    python examples/talk_walkthrough.py           # ~1-2 minutes on 2 cores
    python examples/talk_walkthrough.py --smoke   # tiny sizes, seconds
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_research  # noqa: E402

tf.get_logger().setLevel("ERROR")


def _missing(*paths):
    """Names among `paths` ("layers.RaggedEmbeddingBag") not in the package."""
    missing = []
    for path in paths:
        obj = keras_research
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                missing.append(f"keras_research.{path}")
                break
    return missing


def _sync(value):
    for v in tf.nest.flatten(value):
        if hasattr(v, "numpy"):
            v.numpy()


def timed(candidates, repeats, warmup=1):
    """Median seconds of each zero-argument callable, interleaved."""
    for fn in candidates.values():
        for _ in range(warmup):
            _sync(fn())
    names = list(candidates)
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            _sync(candidates[name]())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def header(number, title, claim):
    print(f"\n=== {number}. {title}")
    print(f"Talk: {claim}")


def report(line):
    print(f"Here: {line}")


def skip(missing):
    print(f"SKIPPED: not available in this checkout: {', '.join(missing)}")


def _train_step(model, optimizer, loss_fn):
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


# --- 1. factorizing library layers ------------------------------------------


def section_factorize(cfg):
    header(
        1,
        "Variable creator scopes: low-rank weights for library layers",
        "a creator scope intercepts every variable a library creates, so "
        "one `with` block reparameterizes layers you did not write (e.g. "
        "makes their weights low rank) without editing their code.",
    )
    missing = _missing("factorized_scope")
    if missing:
        return skip(missing)
    dim, seq, batch, rank = cfg["dim"], cfg["seq"], cfg["batch"], cfg["rank"]

    def block():
        inputs = keras.Input((seq, dim))
        h = keras.layers.MultiHeadAttention(
            num_heads=4, key_dim=dim // 4, name="attention"
        )(inputs, inputs)
        h = keras.layers.LayerNormalization()(h + inputs)
        f = keras.layers.Dense(4 * dim, activation="gelu")(h)
        f = keras.layers.Dense(dim)(f)
        return keras.Model(inputs, keras.layers.LayerNormalization()(f + h))

    keras.utils.set_random_seed(0)
    full = block()
    keras.utils.set_random_seed(0)
    with keras_research.factorized_scope(rank=rank, min_size=0):
        low = block()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, seq, dim)).astype("float32"))
    y = tf.constant(rng.normal(size=(batch, seq, dim)).astype("float32"))
    steps = {}
    for name, model in (("full", full), ("factorized", low)):
        steps[name] = _train_step(
            model, keras.optimizers.Adam(1e-3), keras.losses.MeanSquaredError()
        )
    losses = [float(steps["factorized"](x, y)) for _ in range(3)]
    times = timed(
        {n: (lambda s: lambda: s(x, y))(s) for n, s in steps.items()},
        cfg["repeats"],
    )
    report(
        f"a MultiHeadAttention + Dense block (dim {dim}) built inside "
        f"`factorized_scope(rank={rank})`: {full.count_params():,} -> "
        f"{low.count_params():,} parameters "
        f"({full.count_params() / low.count_params():.1f}x fewer), no layer "
        "code changed."
    )
    report(
        f"train step {times['full'] * 1e3:.1f} ms full vs "
        f"{times['factorized'] * 1e3:.1f} ms factorized "
        f"({times['full'] / times['factorized']:.2f}x); the factorized "
        f"model trains: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 3 steps."
    )


# --- 2. fused activation ------------------------------------------------------


def section_activation(cfg):
    header(
        2,
        "Compilation for activation research",
        "research activations are chains of tiny element-wise ops; op by op "
        "each reads and writes a full tensor. Compiling the activation with "
        "XLA fuses them into one kernel (the talk measured ~25% on a tiny "
        "benchmark).",
    )
    missing = _missing(
        "activations.fused", "activations.silu_softplus_tanh_squared"
    )
    if missing:
        return skip(missing)
    activation = keras_research.activations.silu_softplus_tanh_squared
    shape = cfg["act_shape"]
    x = tf.random.normal(shape, seed=0)

    def value_and_grad(fn):
        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return y, tape.gradient(y, x)

        return run

    unfused_vg = value_and_grad(activation.function)
    fused_vg = value_and_grad(activation)
    (y0, g0), (y1, g1) = unfused_vg(x), fused_vg(x)
    error = max(
        float(tf.reduce_max(tf.abs(y1 - y0))),
        float(tf.reduce_max(tf.abs(g1 - g0))),
    )
    times = timed(
        {"op by op": lambda: unfused_vg(x), "fused": lambda: fused_vg(x)},
        cfg["repeats"],
    )
    report(
        "activation x*sigmoid(x) + 0.1*log1p(exp(-|x|)) - tanh(x)**2 "
        f"(`silu_softplus_tanh_squared`), forward+backward at "
        f"{shape[0]}x{shape[1]} in a tf.function: "
        f"{times['op by op'] * 1e3:.2f} ms op by op vs "
        f"{times['fused'] * 1e3:.2f} ms fused "
        f"({times['op by op'] / times['fused']:.2f}x); max difference "
        f"{error:.1e}."
    )

    def mlp(act):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((cfg["mlp_width"],))]
            + [
                keras.layers.Dense(cfg["mlp_width"], activation=act)
                for _ in range(3)
            ]
            + [keras.layers.Dense(1)]
        )
        model.compile(optimizer="adam", loss="mse", jit_compile=False)
        return model

    rng = np.random.default_rng(1)
    xb = rng.normal(size=(cfg["mlp_batch"], cfg["mlp_width"])).astype("f4")
    yb = rng.normal(size=(cfg["mlp_batch"], 1)).astype("f4")
    models = {"op by op": mlp(activation.function), "fused": mlp(activation)}
    times = timed(
        {
            n: (lambda m: lambda: m.train_on_batch(xb, yb))(m)
            for n, m in models.items()
        },
        cfg["repeats"],
    )
    report(
        f"3x{cfg['mlp_width']} MLP `fit` step (batch {cfg['mlp_batch']}, "
        "jit_compile=False as Keras defaults on CPU): "
        f"{times['op by op'] * 1e3:.2f} ms vs {times['fused'] * 1e3:.2f} ms "
        f"({times['op by op'] / times['fused']:.2f}x)."
    )


# --- 3. compiled optimizer ----------------------------------------------------


def section_optimizer(cfg):
    header(
        3,
        "Compilation for optimizer research",
        "an optimizer written as plain element-wise ops (here the talk's "
        "momentum over a power of the gradient) runs op by op per variable; "
        "compiling the update with XLA fuses it.",
    )
    missing = _missing("optimizers.PowerMomentum")
    if missing:
        return skip(missing)
    width, depth = cfg["opt_width"], cfg["opt_depth"]

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [keras.Input((width,))]
            + [
                keras.layers.Dense(width, activation="relu")
                for _ in range(depth)
            ]
            + [keras.layers.Dense(1)]
        )

    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(32, width)).astype("float32"))
    y = tf.constant(rng.normal(size=(32, 1)).astype("float32"))
    steps, models = {}, {}
    for name, jit in (("op by op", False), ("compiled", True)):
        models[name] = model()
        optimizer = keras_research.optimizers.PowerMomentum(
            learning_rate=0.01, power=2.0, momentum=0.9, jit_compile=jit
        )
        steps[name] = _train_step(
            models[name], optimizer, keras.losses.MeanSquaredError()
        )
    for _ in range(3):
        for step in steps.values():
            step(x, y)
    error = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(
            models["op by op"].get_weights(), models["compiled"].get_weights()
        )
    )
    times = timed(
        {n: (lambda s: lambda: s(x, y))(s) for n, s in steps.items()},
        cfg["repeats"],
    )
    report(
        f"PowerMomentum on a {depth}x{width} MLP "
        f"({2 * (depth + 1)} variables), whole train step: "
        f"{times['op by op'] * 1e3:.2f} ms op by op vs "
        f"{times['compiled'] * 1e3:.2f} ms with the update compiled "
        f"({times['op by op'] / times['compiled']:.2f}x); weights after 3 "
        f"identical steps differ by at most {error:.1e}."
    )


# --- 4. Jacobians -------------------------------------------------------------


def section_jacobian(cfg):
    header(
        4,
        "Jacobians with pfor",
        "`tape.jacobian` and `tape.batch_jacobian` vectorize the loop over "
        "output elements (pfor) instead of calling `tape.gradient` once per "
        "output, which is much faster.",
    )
    batch, features, outputs = cfg["jac_batch"], cfg["jac_in"], cfg["jac_out"]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(outputs),
        ]
    )
    x = tf.random.normal((batch, features), seed=1)

    @tf.function
    def loop(x):
        rows = []
        for i in range(outputs):  # unrolled: one tape.gradient per output
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = model(x)[:, i]
            rows.append(tape.gradient(y, x))
        return tf.stack(rows, axis=1)  # (batch, outputs, features)

    @tf.function
    def batch_jacobian(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
        return tape.batch_jacobian(y, x)

    @tf.function
    def full_jacobian(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
        return tape.jacobian(y, x)  # (batch, outputs, batch, features)

    j_loop, j_batch = loop(x), batch_jacobian(x)
    j_full = full_jacobian(x)
    diagonal = tf.einsum("bobf->bof", j_full)
    error = max(
        float(tf.reduce_max(tf.abs(j_loop - j_batch))),
        float(tf.reduce_max(tf.abs(diagonal - j_batch))),
    )
    times = timed(
        {
            "loop": lambda: loop(x),
            "batch_jacobian": lambda: batch_jacobian(x),
            "jacobian": lambda: full_jacobian(x),
        },
        cfg["repeats"],
    )
    report(
        f"Jacobian of a {features}-64-{outputs} MLP on a batch of {batch}, "
        f"in tf.function: loop of {outputs} tape.gradient "
        f"{times['loop'] * 1e3:.2f} ms, tape.batch_jacobian "
        f"{times['batch_jacobian'] * 1e3:.2f} ms "
        f"({times['loop'] / times['batch_jacobian']:.1f}x), tape.jacobian "
        f"(whole batch, {batch}x larger result) "
        f"{times['jacobian'] * 1e3:.2f} ms; all agree to {error:.1e}."
    )
    if not _missing("callbacks.JacobianRegularizer"):
        report(
            "`keras_research.callbacks.JacobianRegularizer` puts this "
            "penalty into `fit` without touching the model."
        )


# --- 5. ragged sentence embedding ------------------------------------------


def _sentences(n, rng):
    words = [f"w{i}" for i in range(2000)]
    lengths = rng.integers(1, 60, size=n)
    return [" ".join(rng.choice(words, size=k)) for k in lengths], words


def section_ragged(cfg):
    header(
        5,
        "Ragged tensors: a sentence embedding",
        "variable-length text needs no padding: split sentences into a "
        "ragged tensor of words, look the words up in a vocabulary, gather "
        "their embeddings and take the ragged mean.",
    )
    missing = _missing("layers.RaggedEmbeddingBag")
    if missing:
        return skip(missing)
    rng = np.random.default_rng(3)
    sentences, vocabulary = _sentences(cfg["sentences"], rng)
    lookup = keras.layers.StringLookup(vocabulary=vocabulary)
    words = tf.strings.split(tf.constant(sentences))  # ragged strings
    ids = tf.cast(lookup(words), tf.int64)  # ragged ids, 0 = OOV
    dim = 64
    bag = keras_research.layers.RaggedEmbeddingBag(
        lookup.vocabulary_size(), dim, combiner="mean"
    )
    bag.build(ids.shape)
    table = bag.embeddings

    @tf.function
    def by_hand(ids):  # the talk's recipe, op by op
        return tf.reduce_mean(tf.gather(table, ids), axis=1)

    padded = ids.to_tensor(default_value=0)
    mask = tf.cast(ids.to_tensor(default_value=-1) >= 0, "float32")

    @tf.function
    def padded_mean(padded, mask):
        vectors = tf.gather(table, padded) * mask[..., None]
        return tf.reduce_sum(vectors, 1) / tf.reduce_sum(mask, 1)[:, None]

    def fwd_bwd(fn, *args):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(fn(*args) ** 2)
            return tape.gradient(loss, table)

        return run

    layer_fn = tf.function(bag.__call__)
    out_bag, out_hand = layer_fn(ids), by_hand(ids)
    out_pad = padded_mean(padded, mask)
    error = max(
        float(tf.reduce_max(tf.abs(out_bag - out_hand))),
        float(tf.reduce_max(tf.abs(out_bag - out_pad))),
    )
    times = timed(
        {
            "RaggedEmbeddingBag": fwd_bwd(layer_fn, ids),
            "gather + ragged mean": fwd_bwd(by_hand, ids),
            "padded": fwd_bwd(padded_mean, padded, mask),
        },
        cfg["repeats"],
    )
    lengths = ids.row_lengths()
    report(
        f"{len(sentences)} sentences of {int(tf.reduce_min(lengths))}-"
        f"{int(tf.reduce_max(lengths))} words (padded to the longest), "
        f"vocabulary {lookup.vocabulary_size()}, dim {dim}; forward+backward: "
        f"RaggedEmbeddingBag {times['RaggedEmbeddingBag'] * 1e3:.2f} ms, "
        f"gather + ragged mean {times['gather + ragged mean'] * 1e3:.2f} ms, "
        f"padded + masked mean {times['padded'] * 1e3:.2f} ms; outputs agree "
        f"to {error:.1e}."
    )
    inputs = keras.Input(shape=(None,), dtype="int64", ragged=True)
    model = keras.Model(
        inputs,
        keras.layers.Dense(1)(
            keras_research.layers.RaggedEmbeddingBag(
                lookup.vocabulary_size(), 16
            )(inputs)
        ),
    )
    model.compile(optimizer="adam", loss="mse")
    targets = rng.normal(size=(len(sentences), 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((ids, targets)).batch(32)
    losses = model.fit(data, epochs=2, verbose=0, shuffle=False).history["loss"]
    report(
        "the same layer in a functional model with `keras.Input(ragged="
        "True)` trains with `fit` on ragged tf.data batches: loss "
        f"{losses[0]:.4f} -> {losses[-1]:.4f}."
    )


FULL = {
    "repeats": 10,
    "dim": 256,
    "seq": 64,
    "batch": 32,
    "rank": 32,
    "act_shape": (4096, 1024),
    "mlp_width": 512,
    "mlp_batch": 256,
    "opt_width": 1024,
    "opt_depth": 4,
    "jac_batch": 64,
    "jac_in": 64,
    "jac_out": 32,
    "sentences": 2048,
}
SMOKE = {
    "repeats": 1,
    "dim": 32,
    "seq": 8,
    "batch": 4,
    "rank": 4,
    "act_shape": (64, 64),
    "mlp_width": 32,
    "mlp_batch": 16,
    "opt_width": 16,
    "opt_depth": 3,
    "jac_batch": 4,
    "jac_in": 8,
    "jac_out": 3,
    "sentences": 64,
}
SECTIONS = (
    section_factorize,
    section_activation,
    section_optimizer,
    section_jacobian,
    section_ragged,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: a quick check"
    )
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    start = time.perf_counter()
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"keras_research {keras_research.__version__}, "
        f"{os.cpu_count()} CPU cores{' (smoke run)' if args.smoke else ''}"
    )
    for section in SECTIONS:
        section(cfg)
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
