"""Names tests/fuzz_support.py and tests/test_fuzz.py still import from here; their home is tests/helpers.py.

Kept only until the schemathesis change replaces those two files: delete it with them.
"""
from tests.helpers import PROMPTS, SIM_KEY, SKETCH, Sims, backend_settings, body

__all__ = ["PROMPTS", "SIM_KEY", "SKETCH", "Sims", "backend_settings", "body"]
