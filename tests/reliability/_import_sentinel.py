"""Imported by nothing: a `.keras` config naming it must not import it.

`tests/reliability/test_bad_inputs.py` writes this module's path into a
model config; if loading imported it, this line would raise.
"""

raise RuntimeError("a .keras file made keras import this module")
