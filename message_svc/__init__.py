"""message_svc: the front door and system of record (accounts, contacts, threads, messages)."""

from message_svc.api import MessageApi
from message_svc.service import MessageService
from message_svc.sqlstore import SqlStore

__all__ = ["MessageApi", "MessageService", "SqlStore"]
