"""Which store a process runs on: SQL alone, or SQL beside the MongoDB message log."""

from __future__ import annotations

from message_svc import SqlStore
from message_svc.mongolog import MongoMessageLog
from message_svc.splitstore import SplitStore
from natter.metrics import NO_METRICS, Metrics
from natter.settings import Settings


def build_store(
    settings: Settings, *, pool_size: int = 5, metrics: Metrics = NO_METRICS
) -> SqlStore:
    """The SQL store, or the split store when `message_log` names a MongoDB URL."""
    if not settings.message_log:
        return SqlStore(settings.db_url, pool_size=pool_size, metrics=metrics)
    return SplitStore(
        settings.db_url,
        MongoMessageLog(settings.message_log),
        pool_size=pool_size,
        metrics=metrics,
        kill_after_appends=settings.fault_kill_after_log_appends,
    )
