"""CLI profiles: one file per device under $NATTER_HOME/profiles, holding its token and cursors."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Profile:
    server: str = ""
    tls: bool = False  # remembered from login, like the server
    ca: str = ""
    username: str = ""
    user_id: int = 0
    device_id: int = 0
    token: str = ""
    cursors: dict[int, int] = field(default_factory=dict)
    # How far this device has taken the user's own change log (delete for me).
    user_log_seq: int = 0


class ProfileStore:
    def __init__(self, home: Path) -> None:
        self.dir = home / "profiles"

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad profile name {name!r}")
        return self.dir / f"{name}.json"

    def load(self, name: str) -> Profile:
        path = self._path(name)
        if not path.exists():
            return Profile()
        data = json.loads(path.read_text())
        data["cursors"] = {int(k): int(v) for k, v in data.get("cursors", {}).items()}
        return Profile(**data)

    def save(self, name: str, profile: Profile) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        # The token is a credential: the file is readable by its owner only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(profile), fh)
        tmp.replace(path)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
