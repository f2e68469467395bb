#!/usr/bin/env bash
# The whole reliability campaign in one command; appends its figures to RELIABILITY.md.
#   bash bench/reliability.sh [SEED]      (about 15 minutes: 50 SIGKILL trials, then a 10-minute soak)
# The fast part runs in every test run (tests/integration/test_campaign_fast.py and the fault tests
# listed in RELIABILITY.md).
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-$(date +%Y%m%d)}"
.venv/bin/python bench/campaign.py --trials 50 --seed "$seed" --write RELIABILITY.md
.venv/bin/python bench/soak.py --duration 600 --seed "$seed" --write RELIABILITY.md
