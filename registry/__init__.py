"""Membership and routing: nodes register in etcd or in-process; hash rings map keys to nodes."""

from __future__ import annotations

from registry.base import Registry
from registry.etcd import EtcdRegistry
from registry.local import LocalRegistry
from registry.node import Node
from registry.ring import HashRing

__all__ = ["EtcdRegistry", "HashRing", "LocalRegistry", "Node", "Registry"]
