"""``python -m tests.builders [--cache DIR]``: build the test models into the cache."""

from __future__ import annotations

import sys

from tests.builders.models import main

sys.exit(main())
