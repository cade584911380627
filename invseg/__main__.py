"""``python -m invseg`` (also what ``torchrun -m invseg train ...`` runs)."""

from __future__ import annotations

import sys

from invseg.cli import main

sys.exit(main())
