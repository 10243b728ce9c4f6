"""A node of the cluster: one process of one role, as stored in the registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ROLES = frozenset({"socket", "message", "channel", "presence"})


@dataclass(frozen=True, slots=True)
class Node:
    """One process: its id, its role, and where clients and peers reach it.

    `public_addr` is what clients are told to connect to (Locate); `internal_addr` is
    the listener for internal RPCs (Deliver, Publish, heartbeat reports).
    """

    node_id: str
    role: str
    public_addr: str
    internal_addr: str

    def __post_init__(self) -> None:
        if not self.node_id or "/" in self.node_id:
            raise ValueError(f"node_id must be non-empty and contain no '/': {self.node_id!r}")
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {sorted(ROLES)}")

    def to_json(self) -> bytes:
        """Encode as the UTF-8 JSON object stored as the node's etcd value."""
        return json.dumps(
            {
                "node_id": self.node_id,
                "role": self.role,
                "public_addr": self.public_addr,
                "internal_addr": self.internal_addr,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Node:
        """Decode a value written by `to_json`; unknown fields are ignored.

        Raises ValueError if the value is not such an object.
        """
        try:
            obj: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"node value is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError("node value is not a JSON object")
        values: list[str] = []
        for name in ("node_id", "role", "public_addr", "internal_addr"):
            value = obj.get(name)
            if not isinstance(value, str):
                raise ValueError(f"node value needs a string {name!r}")
            values.append(value)
        return cls(*values)
