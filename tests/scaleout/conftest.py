"""A real deployment of several instances: PostgreSQL, Redis, N handoff-servers, nginx with TLS."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from handoffd.server import tlscert
from handoffd.serverlink import ServerClient
from tests.server.helpers import ServerProcess
from tests.services import NginxServer, PostgresServer, RedisServer, free_port


@dataclass
class Cluster:
    """Instances behind nginx sharing one database and one Redis."""

    root: Path
    pg: PostgresServer
    redis: RedisServer
    database: str
    instances: list[ServerProcess] = field(default_factory=list)
    nginx: NginxServer | None = None
    fingerprint: str = ""

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def client(self, key: object = None, result: object = None) -> ServerClient:
        """A client through nginx, pinning nginx's certificate (as a device if given)."""
        return ServerClient(
            self.url,
            fingerprint=self.fingerprint,
            device_key=key,  # type: ignore[arg-type]
            device_cert=None if result is None else result.device_cert,  # type: ignore[attr-defined]
        )

    def direct(self, index: int, key: object, result: object) -> ServerClient:
        """A device client talking to one instance directly (plain HTTP on loopback)."""
        return ServerClient(
            self.instances[index].url,
            fingerprint=None,
            device_key=key,  # type: ignore[arg-type]
            device_cert=result.device_cert,  # type: ignore[attr-defined]
        )

    def instance_id(self, index: int) -> str:
        """The bus instance id that instance ``index`` logged (the last one, after restarts)."""
        found = re.findall(
            r"bus subscribed\" instance=([0-9a-f]+)", self.instances[index].log.read_text()
        )
        assert found, self.instances[index].log.read_text()
        return str(found[-1])

    def start_instance(self, index: int) -> ServerProcess:
        """Start (or restart) instance ``index`` on its fixed port."""
        port = self.ports[index]
        proc = ServerProcess(
            self.root / f"i{index}",
            extra=(
                "--insecure-http",
                "--max-connections-per-address",
                "0",  # behind nginx every client is nginx (docs/server.md)
                "--trusted-proxy",
                "127.0.0.1",
                "--listen",
                f"127.0.0.1:{port}",
                "--public-url",
                f"https://127.0.0.1:{self.nginx_port}",
                "--public-fingerprint",
                self.fingerprint,
                "--bus",
                self.redis.url,
                *self.limits,
            ),
            database=self.database,
        ).start()
        if index < len(self.instances):
            self.instances[index] = proc
        else:
            self.instances.append(proc)
        return proc

    ports: list[int] = field(default_factory=list)
    nginx_port: int = 0
    limits: tuple[str, ...] = ("--join-failures-per-minute", "1000")


def make_cluster(
    root: Path,
    pg: PostgresServer,
    redis: RedisServer,
    n: int,
    limits: tuple[str, ...] = ("--join-failures-per-minute", "1000"),
) -> Cluster:
    """Start ``n`` instances (with ``limits``: extra ``serve`` options) and nginx in front."""
    tls = tlscert.load_or_create(root / "nginx-tls", now=dt.datetime.now(dt.UTC))
    cluster = Cluster(
        root, pg, redis, pg.create_database(), fingerprint=tls.fingerprint, limits=limits
    )
    cluster.ports = [free_port() for _ in range(n)]
    cluster.nginx_port = free_port()
    for i in range(n):
        cluster.start_instance(i)
    cluster.nginx = NginxServer(
        [f"127.0.0.1:{p}" for p in cluster.ports],
        tls.cert_path,
        tls.key_path,
        port=cluster.nginx_port,
    ).start()
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """Stop nginx and every instance."""
    if cluster.nginx is not None:
        cluster.nginx.stop()
    for proc in cluster.instances:
        proc.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, redis_server: RedisServer
) -> Iterator[Cluster]:
    c = make_cluster(tmp_path_factory.mktemp("cluster"), postgres, redis_server, 2)
    try:
        yield c
    finally:
        stop_cluster(c)
