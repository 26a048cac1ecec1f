"""Where a daemon keeps its files: under ``--home DIR`` / ``HANDOFF_HOME``, or platformdirs."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from handoffd.errors import ConfigError
from handoffd.ownership import ensure_private_dir

APP = "handoffd"
HOME_ENV = "HANDOFF_HOME"
# sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True, slots=True)
class Paths:
    """Every file and directory of one daemon (DESIGN.md 4.1)."""

    data_dir: Path
    config_dir: Path
    runtime_dir: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Paths:
        """``home`` if given, else ``$HANDOFF_HOME``, else the platform's user directories."""
        chosen = os.fspath(home) if home is not None else os.environ.get(HOME_ENV) or None
        if chosen:
            root = Path(chosen).expanduser().absolute()
            return cls(data_dir=root, config_dir=root, runtime_dir=root / "run")
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR platformdirs warns and falls back to /tmp/runtime-UID;
            # the path is then named in any error, a warning before it only confuses.
            warnings.simplefilter("ignore")
            runtime_dir = platformdirs.user_runtime_dir(APP, appauthor=False)
        return cls(
            data_dir=Path(platformdirs.user_data_dir(APP, appauthor=False)),
            config_dir=Path(platformdirs.user_config_dir(APP, appauthor=False)),
            runtime_dir=Path(runtime_dir),
        )

    @property
    def identity_dir(self) -> Path:
        """Directory of the device key, certificates and server pin."""
        return self.data_dir / "identity"

    @property
    def device_key(self) -> Path:
        """The device's private key (0600)."""
        return self.identity_dir / "device.key"

    @property
    def device_cert(self) -> Path:
        """The device certificate issued at pairing."""
        return self.identity_dir / "device.crt"

    @property
    def account_ca(self) -> Path:
        """The pinned account CA certificate."""
        return self.identity_dir / "account-ca.crt"

    @property
    def crl(self) -> Path:
        """The newest CRL known."""
        return self.identity_dir / "crl.pem"

    @property
    def server_json(self) -> Path:
        """Server URL and pinned TLS fingerprint (0600)."""
        return self.identity_dir / "server.json"

    @property
    def state_db(self) -> Path:
        """SQLite state: handoffs, checkpoints, sessions."""
        return self.data_dir / "state.db"

    @property
    def inbox(self) -> Path:
        """Received sessions, one directory per handoff id."""
        return self.data_dir / "inbox"

    @property
    def partial(self) -> Path:
        """Transfers in progress, one directory per handoff id."""
        return self.data_dir / "partial"

    @property
    def config_toml(self) -> Path:
        """Settings (0600)."""
        return self.config_dir / "config.toml"

    @property
    def control_socket(self) -> Path:
        """The control API's Unix socket (0600, in a 0700 directory)."""
        return self.runtime_dir / "control.sock"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the running daemon; a second daemon on this home refuses to start."""
        return self.runtime_dir / "handoffd.lock"

    def private_dirs(self) -> tuple[Path, ...]:
        """The distinct top directories: data, config, then runtime (``run/``, the socket's)."""
        return tuple(dict.fromkeys((self.data_dir, self.config_dir, self.runtime_dir)))

    def ensure_private(self) -> None:
        """Create missing private directories 0700; ConfigError(home-unsafe) unless each is ours."""
        for d in self.private_dirs():
            ensure_private_dir(d)

    def check_socket_path(self) -> None:
        """Raise ConfigError if the socket path is too long for AF_UNIX."""
        if len(os.fsencode(self.control_socket)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"control socket path is too long for a Unix socket: {self.control_socket}; "
                "use a shorter --home",
                code="socket-path-too-long",
            )
