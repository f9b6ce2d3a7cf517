"""Suite-wide settings.

Under CI (``CI`` set, as `.ci/run` runs) hypothesis draws the same examples every run, so
a landing is judged on reproducible input; locally every run explores new examples.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
