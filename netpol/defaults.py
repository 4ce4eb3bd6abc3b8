"""NetworkPolicy's defaults, named once: the enforcer and compiler use them, and tartand's
flags show them without importing either."""

RESYNC_INTERVAL = 30.0  # seconds between full syncs when nothing changed (--policy-resync)
NFLOG_GROUP = 100  # where denied packets are logged (--policy-log-denied)
