"""Test-session setup shared by every test module."""

import tests.property_settings  # noqa: F401  (loads the hypothesis profile first)
