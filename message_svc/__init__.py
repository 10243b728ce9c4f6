"""message_svc: the front door and system of record (accounts, contacts, threads, messages)."""

from message_svc.client import MessageClient
from message_svc.service import PUBLIC_SERVICES, MessageService
from message_svc.sqlstore import SqlStore

__all__ = ["PUBLIC_SERVICES", "MessageClient", "MessageService", "SqlStore"]
