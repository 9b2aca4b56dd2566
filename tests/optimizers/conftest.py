"""Shared fixtures of the optimizer tests."""

import pytest

from keras_research.optimizers import CustomOptimizer

# The tests exercise both paths of the template (compiled calls and op by
# op) with small variables: from 128 x 128 = 16,384 elements a variable is
# compiled here (the shipped threshold, `CustomOptimizer._op_by_op_below`,
# is larger; `test_default_threshold_*` checks it).
TEST_THRESHOLD = 16384
SHIPPED_THRESHOLD = CustomOptimizer._op_by_op_below


@pytest.fixture(autouse=True)
def _small_compile_threshold(monkeypatch):
    monkeypatch.setattr(CustomOptimizer, "_op_by_op_below", TEST_THRESHOLD)
