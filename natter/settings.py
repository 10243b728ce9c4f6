"""The one settings object, built once from flags, NATTER_* environment and a TOML file."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ROLES = ("embedded", "socket", "message", "channel", "presence")
REGISTRATION = ("open", "invite", "closed")
PRESENCE_AUDIENCES = ("contacts", "contacts_and_chats")
LOG_FORMATS = ("json", "text")
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a natter process can be told; immutable once built."""

    role: str = "embedded"
    data_dir: Path = Path("natter-data")
    grpc_addr: str = "127.0.0.1:7070"
    http_addr: str = "127.0.0.1:7080"
    internal_addr: str = "127.0.0.1:0"
    advertise_addr: str = ""
    # The internal address other nodes are given (registry), when not the bound one: a node
    # behind NAT or a proxy.
    advertise_internal_addr: str = ""
    node_id: str = ""
    database_url: str = ""
    # A MongoDB URL (mongodb://…/natter?replicaSet=…) for the message log: messages, their
    # seqs, idempotency keys and events live there, everything else in the SQL store.
    # Empty: the SQL store holds the log too (docs/deployment.md, "The message log on MongoDB").
    message_log: str = ""
    # Fault injection for the crash tests only: n > 0 makes a process SIGKILL itself right
    # after its n-th message-log append, before the SQL transaction that follows it.
    fault_kill_after_log_appends: int = 0
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/natter"
    lease_ttl_seconds: int = 5
    cluster_secret: str = ""
    max_text_bytes: int = 64 * 1024
    max_frame_bytes: int = 256 * 1024
    max_group_members: int = 1024
    group_history_from_join: bool = True
    heartbeat_interval_seconds: float = 5.0
    presence_timeout_beats: int = 3
    session_idle_timeout_seconds: float = 600.0
    # A device stream must open with Hello within this long, or it is closed (HELLO_TIMEOUT).
    hello_timeout_seconds: float = 30.0
    keepalive_seconds: float = 30.0
    frames_per_second: float = 200.0
    frame_burst: int = 2000
    # Typing indicators per device: a client paces them (a start at most every few seconds,
    # within a budget of 1 a second and 3 at once, see docs/clients.md); the server's bucket
    # is twice that, so network jitter bunching a client's frames never trips it.
    typing_per_second: float = 2.0
    typing_burst: int = 6
    presence_push_group_size: int = 32
    ack_flush_seconds: float = 0.2
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    argon2_parallelism: int = 1
    # After this many wrong passwords for one account, each further try waits a delay that
    # doubles from login_delay_seconds up to login_delay_max_seconds; a success clears it.
    # These count per account *and* client address, so a stranger elsewhere slows down only
    # themselves; past login_account_failures_allowed wrong passwords from anywhere the
    # account itself waits (a device that holds a token of the account still gets in).
    login_failures_allowed: int = 5
    login_delay_seconds: float = 1.0
    login_delay_max_seconds: float = 300.0
    login_account_failures_allowed: int = 100
    # Push notifications to devices without a live stream (docs/push.md).
    # A message is pushed this long after it was stored, to devices still not active then.
    push_grace_seconds: float = 3.0
    # How long a push service keeps an undelivered notification (Web Push TTL).
    push_ttl_seconds: int = 24 * 3600
    # This process drains the push queue (embedded server and message nodes).
    push_worker: bool = True
    # How often an idle worker looks for due work; how long a claim holds before another
    # process may take the work over (a worker that was killed).
    push_poll_seconds: float = 0.25
    push_lease_seconds: float = 30.0
    # Tries per device before a failing push is given up (backoff doubles from 1 s).
    push_max_attempts: int = 8
    # Push requests in flight at once per process.
    push_concurrency: int = 64
    # VAPID (RFC 8292) contact for push services: "mailto:ops@example.org" or an https URL.
    vapid_subject: str = ""
    # PEM file of the VAPID private key; unset: a key generated at first start, kept in
    # the database so every process of a cluster signs with it.
    vapid_private_key_file: str = ""
    # Hosts (and their subdomains) a Web Push endpoint may name: the browsers' push services.
    web_push_hosts: tuple[str, ...] = (
        "fcm.googleapis.com",
        "updates.push.services.mozilla.com",
        "push.services.mozilla.com",
        "notify.windows.com",
        "push.apple.com",
    )
    # Mobile push gateways (notify URLs) devices may register tokens for.
    push_gateway_urls: tuple[str, ...] = ()
    # Allow http:// push endpoints and gateways (local test push services only).
    push_allow_http: bool = False
    # Messages people send (docs/messages.md): edits and deletes for everyone within a
    # window of the message's time (a group admin may delete any message at any time).
    edit_window_seconds: float = 15 * 60
    delete_window_seconds: float = 48 * 3600
    # Attachments: uploaded over HTTP in chunks, kept by SHA-256 in a blob store ("file"
    # under data_dir/blobs, or "s3"; empty: s3 when s3_endpoint is set, else file).
    max_attachment_bytes: int = 100 * 1024 * 1024
    upload_chunk_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    upload_expiry_seconds: float = 24 * 3600
    blob_store: str = ""
    blob_dir: Path | None = None
    s3_endpoint: str = ""
    s3_bucket: str = "natter"
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    # Blobs no message refers to are deleted this long after they were last referred to.
    blob_gc_grace_seconds: float = 24 * 3600
    blob_gc_interval_seconds: float = 3600.0
    # Signed download links (for <img src>) work this long.
    media_link_seconds: float = 3600.0
    # What MediaService.GetMediaInfo says uploads go to; empty: the caller's HTTP origin.
    public_http_url: str = ""
    # Per client address: login attempts (each costs an Argon2 hash) and registrations;
    # and registrations from everywhere together.
    logins_per_ip_per_minute: float = 60.0
    registrations_per_ip_per_hour: float = 10.0
    registrations_per_hour: float = 100.0
    # Who may create an account: open (rate limited), invite (single-use codes from an
    # admin), closed (admins create accounts). The first account of a fresh install becomes
    # admin. An admin's choice (`natter admin registration`) is stored and wins over this.
    registration: str = "open"
    invite_lifetime_seconds: float = 7 * DAY
    max_devices_per_user: int = 10
    # A device's token lapses after this long unused; use renews it (silently, no new token).
    token_lifetime_seconds: float = 90 * DAY
    # How often socket servers check that their sessions' devices are still logged in.
    session_recheck_seconds: float = 60.0
    # Device streams from one client address that have not said Hello yet.
    max_pending_streams_per_address: int = 32
    # Who sees a user's online status and last seen: "contacts" (people the user has as a
    # contact and who have the user back) or "contacts_and_chats" (also people the user
    # shares a direct chat or a small group with).
    presence_audience: str = "contacts"
    # Messages copied into a report for the admins, at most.
    report_max_messages: int = 20
    # Peers whose X-Forwarded-For / x-forwarded-for is believed (the client address is then
    # its last entry): addresses or CIDR networks of reverse proxies.
    trusted_proxies: tuple[str, ...] = ()
    metrics_enabled: bool = True
    # A small HTTP listener for /metrics of this process (cluster roles have no other);
    # empty for none. The embedded server also answers /metrics on its HTTP listener.
    metrics_addr: str = ""
    # When set, /metrics needs "Authorization: Bearer <token>"; when unset it answers only
    # loopback and private-network addresses.
    metrics_token: str = ""
    # The delivery canary: a system user messaging itself end to end this often (0: off).
    canary_interval_seconds: float = 30.0
    canary_timeout_seconds: float = 10.0
    web_dir: Path | None = None
    # PEM files; when both are set the public gRPC and HTTP listeners speak TLS only.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL; SQLite under the data folder unless set."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'natter.db'}"

    @property
    def presence_timeout_seconds(self) -> float:
        return self.heartbeat_interval_seconds * self.presence_timeout_beats

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: Any, raw: object) -> object:
    text = str(raw)
    if kind in ("int", int):
        return int(text)
    if kind in ("float", float):
        return float(text)
    if kind in ("bool", bool):
        if isinstance(raw, bool):
            return raw
        return text.lower() in ("1", "true", "yes", "on")
    if kind in ("Path", Path):
        return Path(text)
    if kind in ("Path | None",):
        return Path(text) if text else None
    if kind in ("tuple[str, ...]",):
        if isinstance(raw, list | tuple):
            return tuple(str(x) for x in raw)
        return tuple(p.strip() for p in text.split(",") if p.strip())
    if kind in ("str", str):
        return text
    raise ValueError(f"setting {name} cannot be set from text")


def load(
    overrides: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build Settings: defaults < config file < NATTER_<NAME> env < explicit overrides."""
    values: dict[str, object] = {}
    known = {f.name: f.type for f in fields(Settings)}
    env = env or {}
    path = config_file or (Path(env["NATTER_CONFIG"]) if env.get("NATTER_CONFIG") else None)
    if path is not None:
        with path.open("rb") as fh:
            for key, raw in tomllib.load(fh).items():
                name = key.replace("-", "_")
                if name not in known:
                    raise ValueError(f"unknown setting {key!r} in {path}")
                values[name] = _coerce(name, known[name], raw)
    for name, kind in known.items():
        raw_env = env.get("NATTER_" + name.upper())
        if raw_env is not None and raw_env != "":
            values[name] = _coerce(name, kind, raw_env)
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in known:
            raise ValueError(f"unknown setting {name!r}")
        values[name] = _coerce(name, known[name], raw)
    settings = Settings(**values)  # type: ignore[arg-type]
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    if settings.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    for name, allowed in (
        ("registration", REGISTRATION),
        ("presence_audience", PRESENCE_AUDIENCES),
        ("log_format", LOG_FORMATS),
    ):
        if getattr(settings, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}")
    return settings
