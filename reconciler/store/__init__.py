"""The store: the audit database (runs and actions) and the controller's state kept beside it (known
hosts, host states, rollout pauses, kept documents).

    db.py        the URL, the engine, the schema at the head Alembic revision (reconciler/migrations)
    models.py    the ORM models (tables the migrations own)
    rows.py      what callers get and give: frozen rows, the action record, the action filter,
                 statuses, --since parsing
    database.py  Database: one open engine, short read/write sessions, outcomes not yet written
    audit.py     AuditLog (a Database): runs, actions and snapshots; ``AuditLog(url).state`` is the state
                 store
    state.py     ControllerState: known hosts, host states, kept documents, rollout pauses
"""

from reconciler.store.audit import AuditLog as AuditLog
from reconciler.store.audit import default_controller as default_controller
from reconciler.store.database import Database as Database
from reconciler.store.db import DEFAULT_DB_ENV as DEFAULT_DB_ENV
from reconciler.store.db import MIGRATIONS_DIR as MIGRATIONS_DIR
from reconciler.store.db import SCHEMA_REVISION as SCHEMA_REVISION
from reconciler.store.db import default_database_url as default_database_url
from reconciler.store.db import normalize_url as normalize_url
from reconciler.store.db import sqlite_path as sqlite_path
from reconciler.store.models import ActionModel as ActionModel
from reconciler.store.models import Base as Base
from reconciler.store.models import RunModel as RunModel
from reconciler.store.rows import ACTION_KINDS as ACTION_KINDS
from reconciler.store.rows import ACTION_STATUSES as ACTION_STATUSES
from reconciler.store.rows import RUN_STATUSES as RUN_STATUSES
from reconciler.store.rows import ActionFilter as ActionFilter
from reconciler.store.rows import ActionRecord as ActionRecord
from reconciler.store.rows import ActionRow as ActionRow
from reconciler.store.rows import ControllerRow as ControllerRow
from reconciler.store.rows import DocumentRow as DocumentRow
from reconciler.store.rows import HostState as HostState
from reconciler.store.rows import RunRow as RunRow
from reconciler.store.rows import SnapshotRow as SnapshotRow
from reconciler.store.rows import parse_since as parse_since
from reconciler.store.state import ControllerState as ControllerState
