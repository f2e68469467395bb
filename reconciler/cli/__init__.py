"""consul-reconciler: the command line (``reconciler/cli/app.py`` assembles it).

Exit codes: 0 success (for ``plan``: nothing to do), 1 error or not converged,
2 (``plan`` only) changes are pending.
"""

from reconciler.cli.app import app as app
from reconciler.cli.app import main as main
