"""What a factorization says about the weights it did not factorize.

Issue 14, point 8: a factorization that factorizes nothing says why.
"""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research.layers import factorized_dense
from keras_research.scopes import factorize, factorized_scope
from keras_research.scopes import weight_creator_scope as wcs


def test_scope_around_small_tf_module_warns_with_the_threshold():
    class Small(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones((30, 40)), name="w")

    with pytest.warns(UserWarning, match=r"min_size=4096") as record:
        with keras_research.factorized_scope(rank=4) as scope:
            module = Small()
    assert isinstance(module.w, tf.Variable)
    assert "factorized no weight" in str(record[0].message)
    (skipped,) = scope.report.skipped
    assert skipped["shape"] == (30, 40)
    assert skipped["reason"] == "1200 elements < min_size=4096"


def test_scope_that_builds_nothing_says_so():
    with pytest.warns(UserWarning, match="build the model inside the scope"):
        with keras_research.factorized_scope(rank=4):
            keras.Sequential([keras.layers.Dense(64)])  # Not built.


def test_factorize_energy_without_compression_says_why():
    # Orthogonal weights: a flat spectrum, so keeping 90% of the energy
    # needs 90% of the rank, which saves no parameters.
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, name="square")]
    )
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 64)))
    model.layers[0].kernel.assign(q)
    with pytest.warns(UserWarning, match="energy=0.9 needs rank 58"):
        new, report = keras_research.factorize(model, energy=0.9)
    assert len(report) == 0
    (skipped,) = report.skipped
    assert skipped["path"] == "square/kernel"
    assert "saves nothing" in skipped["reason"]
    assert report.model_params_before == report.model_params_after
    assert "kept full rank" in report.summary()
    assert "square/kernel" in str(report)


def test_factorize_report_names_thin_weights():
    model = keras.Sequential(
        [
            keras.Input((1024,)),
            keras.layers.Dense(512, name="hidden"),
            keras.layers.Dense(10, name="head"),  # 512 x 10
        ]
    )
    _, report = keras_research.factorize(model, rank=0.25)
    assert [e["path"] for e in report] == ["hidden/kernel"]
    assert report.skipped == [
        {
            "path": "head/kernel",
            "shape": (512, 10),
            "reason": "smaller side 10 < min_dim=32",
        }
    ]


@pytest.mark.parametrize(
    "module", [factorized_dense, factorize, factorized_scope, wcs]
)
def test_docstring_examples(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, globs={})
    assert any(t.examples for t in tests)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
