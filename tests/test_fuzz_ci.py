"""The CI-sized crash-injection fuzz campaign (fuzz/, docs/fuzzing.md): fails on any violation.

Runs, within about 100 seconds on two cores: the exhaustive catalogue under
process death (every step of every workload), recovery interrupted at each
of its own steps (after a writer's death and after a power cut), the
power-loss model (four variants at every step of most workloads, and during
recovery), random workloads from hypothesis, and a short kill -9 soak.
``scripts/fuzz --budget SECONDS`` runs the long version.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fuzz"))

import runner  # noqa: E402

BUDGET = float(os.environ.get("TENSORBLOB_FUZZ_CI_BUDGET", "95"))


def test_ci_fuzz_campaign_finds_no_violation() -> None:
    tally = runner.run(BUDGET, 0, profile="ci", soak_seconds=10.0)
    print(tally.summary())
    assert tally.crash_points > 1000, tally.summary()
    assert not tally.violations, tally.summary()
