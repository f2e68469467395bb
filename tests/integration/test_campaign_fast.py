"""The fast part of the SIGKILL campaign (bench/campaign.py), in every test run: a few seeded trials."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from testbed.fleet import Engine


def test_sigkill_at_random_points_always_converges_and_resolves_rows(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    path = Path(__file__).resolve().parents[2] / "bench" / "campaign.py"
    spec = importlib.util.spec_from_file_location("campaign", path)
    assert spec is not None and spec.loader is not None
    campaign = importlib.util.module_from_spec(spec)
    sys.modules["campaign"] = campaign
    spec.loader.exec_module(campaign)
    outcome = campaign.run_campaign(trials=3, seed=1127, workdir=tmp_path)
    assert outcome.violations == []
    assert outcome.converged == outcome.trials == 3
