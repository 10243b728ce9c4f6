"""A real S3-compatible server for tests: S3Proxy 2.6.0 (Maven Central) on a filesystem backend.

`scripts/install --all` fetches the jar (`org.gaul:s3proxy:2.6.0`, classifier
`jar-with-dependencies`) with Maven into `.cache/m2` of this repository; `async with
S3ProxyServer() as s3:` runs it in a temporary folder on a free port (it listens in about
two seconds). `s3.endpoint`, `s3.access_key` and `s3.secret_key` are what a client needs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp

from devtools.ports import HOST, free_port
from devtools.processes import ServerProcess, ServerUnavailable

VERSION = "2.6.0"
REPO = Path(__file__).resolve().parent.parent
MAVEN_REPO = REPO / ".cache" / "m2"
JAR = (
    MAVEN_REPO
    / "org"
    / "gaul"
    / "s3proxy"
    / VERSION
    / f"s3proxy-{VERSION}-jar-with-dependencies.jar"
)
INSTALL_HINT = "run scripts/install --all (it fetches S3Proxy with Maven; Java 17 is needed)"
ACCESS_KEY = "natter-test"
SECRET_KEY = "natter-test-secret"


def s3proxy_jar() -> Path | None:
    found = os.environ.get("NATTER_S3PROXY_JAR")
    if found and Path(found).is_file():
        return Path(found)
    return JAR if JAR.is_file() else None


def missing() -> str | None:
    """Why S3Proxy cannot run here, or None."""
    if shutil.which("java") is None:
        return f"java not found; {INSTALL_HINT}"
    if s3proxy_jar() is None:
        return f"S3Proxy {VERSION} not found at {JAR}; {INSTALL_HINT}"
    return None


class S3ProxyServer(ServerProcess):
    """S3Proxy with jclouds' filesystem provider under its own folder, on 127.0.0.1."""

    name = "s3proxy"
    stop_timeout = 5.0
    not_ready = (aiohttp.ClientError, TimeoutError, OSError)

    def __init__(self, root: Path | None = None, *, port: int = 0) -> None:
        reason = missing()
        if reason is not None:
            raise ServerUnavailable(reason)
        super().__init__(root)
        self.port = port
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _ports_chosen(self) -> bool:
        return self.port != 0

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _argv(self) -> list[str]:
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        props = self.root / "s3proxy.properties"
        props.write_text(
            "\n".join(
                [
                    f"s3proxy.endpoint=http://{HOST}:{self.port}",
                    "s3proxy.authorization=aws-v2-or-v4",
                    f"s3proxy.identity={self.access_key}",
                    f"s3proxy.credential={self.secret_key}",
                    "jclouds.provider=filesystem",
                    f"jclouds.filesystem.basedir={data}",
                    "",
                ]
            )
        )
        jar = s3proxy_jar()
        assert jar is not None
        return ["java", "-Xmx256m", "-jar", str(jar), "--properties", str(props)]

    async def _probe(self) -> bool:
        """Any HTTP answer (an unsigned request gets 403) means it listens."""
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.endpoint) as r,
        ):
            return r.status in (200, 403)
