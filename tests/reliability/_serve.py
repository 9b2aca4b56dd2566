"""Serves exported SavedModels with TensorFlow alone (run as a script).

    python tests/reliability/_serve.py EXPORT_DIR

For every `EXPORT_DIR/<name>/` SavedModel with a `EXPORT_DIR/<name>.in.npz`
beside it, loads the model with `tf.saved_model.load`, calls its `serve`
endpoint on the arrays of the `.npz` (positionally, in the order saved:
`values` and `row_splits` for ragged ids, or the dense input), checks
that the `serving_default` signature gives the same, and writes
`EXPORT_DIR/<name>.out.npz`. Never imports keras_research: it checks that
the exported graphs are self-contained, and fails if keras_research was
imported along the way. (`import tensorflow` itself imports Keras, for
`tf.keras`; no code of ours is involved.)
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(export_dir):
    names = sorted(
        f[: -len(".in.npz")] for f in os.listdir(export_dir)
        if f.endswith(".in.npz")
    )
    for name in names:
        served = tf.saved_model.load(os.path.join(export_dir, name))
        with np.load(os.path.join(export_dir, f"{name}.in.npz")) as f:
            inputs = {k: tf.constant(f[k]) for k in f.files}
        output = served.serve(*inputs.values())  # in the order saved
        if isinstance(output, dict):
            (output,) = output.values()
        np.savez(os.path.join(export_dir, f"{name}.out.npz"),
                 output=output.numpy())
        # The serving_default signature works too (what TF Serving calls).
        signature = served.signatures["serving_default"]
        names = list(signature.structured_input_signature[1])
        if len(names) == 1:
            kwargs = {names[0]: next(iter(inputs.values()))}
        else:
            kwargs = {k: inputs[k] for k in names}
        (sig_out,) = signature(**kwargs).values()
        np.testing.assert_array_equal(sig_out.numpy(), output.numpy())
    leaked = [m for m in sys.modules if m.startswith("keras_research")]
    if leaked:
        raise SystemExit(f"serving imported {leaked}")
    print(f"served {len(names)} models: {names}")


if __name__ == "__main__":
    main(sys.argv[1])
