"""How hard the property tests look: one profile per setting, chosen by environment.

- ``ci``: derandomized (the same examples on every run and every machine), so a test
  run can never fail by chance; what it checks is what the last green run checked.
  ``.ci/run`` selects it (``TASKD_HYPOTHESIS_PROFILE=ci``).
- ``dev`` (the default elsewhere): fresh random examples each run, twice as many, and
  hypothesis' example database (``.hypothesis/``) so a failure found replays first.
- ``deep``: random, twenty times as many: a long hunt by hand, e.g.
  ``TASKD_HYPOTHESIS_PROFILE=deep scripts/test tests/test_cronsim_property.py``.

Every failing case a random run finds becomes an ``@example`` of its test, so the
``ci`` profile checks it from then on.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("TASKD_HYPOTHESIS_PROFILE", "dev")
SCALES = {"ci": 1, "dev": 2, "deep": 20}
if PROFILE not in SCALES:
    raise RuntimeError(f"TASKD_HYPOTHESIS_PROFILE={PROFILE!r}: not one of {sorted(SCALES)}")
SCALE = SCALES[PROFILE]

# No per-example deadline anywhere: on a loaded machine it is a timing assertion that
# fails by chance (speed is the benchmark's business, never a test's).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True,
                          deadline=None)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.register_profile("deep", print_blob=True, deadline=None)
settings.load_profile(PROFILE)


def examples(count: int) -> int:
    """``count`` examples scaled for the profile (``max_examples=examples(300)``)."""
    return count * SCALE
