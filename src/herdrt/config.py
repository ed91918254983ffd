"""The herd file: which nodes make up a herd, how they link, and the tunables they share.

A herd file is TOML (read with the stdlib ``tomllib``)::

    [herd]
    secret_env = "HERDRT_SECRET"     # exactly one of: secret, secret_file, secret_env
    # allow_readable_secret_files = true  # accept secret files other users can read (default: refuse)
    max_clock_skew = 60.0            # seconds a node's clock may run ahead of another's
    links = [["Clark", "Jaquez"], ["Clark", "Bona"]]   # the neighbor graph; omit for a full mesh
    heartbeat_interval = 0.5         # seconds between heartbeats on each link
    failure_threshold = 8.0          # phi above which a silent node is declared down
    max_frame_size = 1048576         # bytes, per frame, on every link
    mailbox_size = 1024              # default bound of an actor's mailbox
    mailbox_overflow = "reject"      # block | reject | drop_oldest | drop_newest
    apps = ["herdrt.apps.proxy:setup"]  # MODULE:FUNCTION hooks every node calls at start-up

    [[nodes]]
    name = "Clark"
    host = "127.0.0.1"               # default 127.0.0.1: nodes bind to loopback unless told otherwise
    port = 11003                     # herd links
    app_port = 12003                 # optional: the node's application (e.g. the location proxy)
    bridge_port = 13003              # optional: the ZMQ bridge for services in other languages
    http_port = 12103                # optional: HTTP: /metrics (Prometheus), /healthz, / (the herd page)

    [herd.bridge]                    # optional: settings of every node's ZMQ bridge
    evict_after = 3.0                # seconds of silence after which a service is evicted
    max_queued = 65536               # messages queued per service when ZeroMQ pushes back
    curve_secret_key_file = "bridge.key"   # turns CURVE on: the server's z85 secret key (`herdrt keys`)
    curve_public_key = "..."         # optional: checked against the one derived from the secret key
    allowed_client_keys = ["..."]    # with CURVE: the z85 public keys of the services let in

    [herd.tls]                       # optional: mutual TLS on every herd link (for herds across hosts)
    ca_file = "ca.pem"               # the CA that signs every node's (and client's) certificate
    cert_file = "{node}.pem"         # this node's certificate chain; "{node}" is its name
    key_file = "{node}.key"          # its private key (readable by its owner only)
    # check_names = true             # a node's certificate must name it (DNS SAN or CN)
    # client_cert_file, client_key_file: what clients (the CLI) present; default: {node} = "client"

    [app.proxy]                      # optional: settings of an application, one table per app
    line_timeout = 10.0              # (the app validates its own table; see herdrt.apps.proxy)

Every validation error is a :class:`ConfigError` naming the file, the key and what is wrong; it
never shows a secret's value.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import HerdError

__all__ = [
    "ConfigError",
    "NodeConfig",
    "BridgeConfig",
    "TlsConfig",
    "HerdConfig",
    "read_secret_file",
    "load_config",
    "loads_config",
    "parse_config",
    "bundled_config_text",
]

OVERFLOW_POLICIES = ("block", "reject", "drop_oldest", "drop_newest")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(HerdError, ValueError):
    """A herd file is missing, unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class NodeConfig:
    """One node of the herd: where its links, application and bridge listen."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    app_port: int | None = None
    bridge_port: int | None = None
    http_port: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class BridgeConfig:
    """``[herd.bridge]``: how each node's ZMQ bridge treats services (see :mod:`herdrt.bridge`).

    CURVE is on when ``curve_secret_key`` is set; keys are z85 text (40 characters) as bytes.
    """

    evict_after: float = 3.0
    max_queued: int = 65536
    curve_secret_key: bytes | None = field(default=None, repr=False)
    curve_public_key: bytes | None = None
    allowed_client_keys: tuple[bytes, ...] = ()

    @property
    def curve(self) -> bool:
        return self.curve_secret_key is not None


@dataclass(frozen=True)
class TlsConfig:
    """``[herd.tls]``: mutual TLS on herd links (see :mod:`herdrt.herd.tls`). ``cert_file``/``key_file``
    may hold ``{node}``, replaced by the name of the node (or ``"client"``) that uses them."""

    ca_file: str
    cert_file: str
    key_file: str
    check_names: bool = True
    client_cert_file: str | None = None
    client_key_file: str | None = None
    base: Path | None = None  # relative paths are relative to the herd file
    allow_readable_key: bool = False  # herd.allow_readable_secret_files

    @property
    def ca_path(self) -> Path:
        return self.path(self.ca_file, "")

    def path(self, template: str, node: str) -> Path:
        path = Path(template.replace("{node}", node)).expanduser()
        return path if path.is_absolute() or self.base is None else self.base / path

    def cert_and_key(self, node: str | None) -> tuple[Path, Path]:
        """The certificate and key of node ``node``, or of a client (``None``)."""
        if node is None:
            if self.client_cert_file is not None and self.client_key_file is not None:  # given together
                return self.path(self.client_cert_file, "client"), self.path(self.client_key_file, "client")
            node = "client"
        return self.path(self.cert_file, node), self.path(self.key_file, node)


@dataclass(frozen=True)
class HerdConfig:
    """A whole herd: its nodes, its neighbor graph and the settings every node shares."""

    nodes: dict[str, NodeConfig]
    links: frozenset[frozenset[str]]
    secret: bytes = field(repr=False)
    heartbeat_interval: float = 0.5
    failure_threshold: float = 8.0
    max_frame_size: int = 1 << 20
    #: Seconds a node's clock may be ahead of another's: a membership report whose incarnation
    #: (start time) is further ahead is refused as forged.
    max_clock_skew: float = 60.0
    mailbox_size: int = 1024
    mailbox_overflow: str = "reject"
    apps: tuple[str, ...] = ()
    source: str = "<herd config>"
    bridge: BridgeConfig = BridgeConfig()
    tls: TlsConfig | None = None
    #: ``[app.NAME]`` tables: settings of the herd's applications, each validated by its app.
    app: dict[str, dict] = field(default_factory=dict)

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``; a :class:`ConfigError` listing the known names otherwise."""
        try:
            return self.nodes[name]
        except KeyError:
            raise ConfigError(f"{self.source}: no node named {name!r} (nodes: {', '.join(self.nodes)})") from None

    def neighbors(self, name: str) -> list[str]:
        """The nodes linked to ``name``, sorted."""
        self.node(name)
        return sorted(other for link in self.links if name in link for other in link if other != name)


#: The keys of a [[nodes]] table; the ports come last.
_NODE_KEYS = ("name", "host", "port", "app_port", "bridge_port", "http_port")


def _fail(source: str, key: str, problem: str):
    raise ConfigError(f"{source}: {key}: {problem}")


def _get(table: dict, key: str, kind, source: str, where: str, default=None, required=False, secret=False):
    if key not in table:
        if required:
            _fail(source, f"{where}{key}", "is required")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        shown = "" if secret else f" {value!r}"  # never echo a secret, even a malformed one
        _fail(source, f"{where}{key}", f"must be {names}, not {type(value).__name__}{shown}")
    return value


def read_secret_file(path: Path, source: str, key: str, allow_readable: bool = False, missing_hint: str = "") -> str:
    """The text of a file holding a secret; a :class:`ConfigError` (naming ``source`` and ``key``,
    and adding ``missing_hint`` when there is no such file) if it cannot be read, or if other users
    may read it and ``allow_readable`` is false."""
    try:
        mode = path.stat().st_mode
        text = path.read_text("utf-8")
    except FileNotFoundError:
        _fail(source, key, f"cannot read {path}: no such file{missing_hint}")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(source, key, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not allow_readable:
        _fail(
            source,
            key,
            f"{path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}` (or set herd.allow_readable_secret_files = true)",
        )
    return text


def _port(table: dict, key: str, source: str, where: str, required=False):
    value = _get(table, key, int, source, where, required=required)
    if value is not None and not 1 <= value <= 65535:
        _fail(source, f"{where}{key}", f"must be a TCP port between 1 and 65535, not {value}")
    return value


def _positive(herd: dict, key: str, kind, default, source: str):
    value = _get(herd, key, kind, source, "herd.", default)
    if value <= 0:
        _fail(source, f"herd.{key}", f"must be positive, not {value}")
    return value


def _secret(herd: dict, source: str, base: Path | None, allow_readable: bool) -> bytes:
    given = [k for k in ("secret", "secret_file", "secret_env") if k in herd]
    if len(given) != 1:
        _fail(
            source,
            "herd.secret",
            "give exactly one of secret, secret_file, secret_env" + (f" (found {', '.join(given)})" if given else ""),
        )
    key = given[0]
    value = _get(herd, key, str, source, "herd.", secret=key == "secret")
    if key == "secret":
        secret = value
    elif key == "secret_file":
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        hint = f"; make one with `herdrt secret --file {path}`"
        secret = read_secret_file(path, source, "herd.secret_file", allow_readable, hint).strip()
    else:
        secret = os.environ.get(value, "")
        if not secret:
            _fail(source, "herd.secret_env", f"environment variable {value} is unset or empty; export it first")
    if len(secret) < 8:
        _fail(source, f"herd.{key}", "the shared secret must be at least 8 characters")
    return secret.encode("utf-8")


_Z85_KEY = re.compile(r"^[0-9A-Za-z.:+=^!/*?&<>()\[\]{}@%$#-]{40}$")


def _z85_key(value, source: str, key: str, secret: bool = False) -> bytes:
    if not isinstance(value, str) or not _Z85_KEY.match(value):
        shown = "" if secret else f", not {value!r:.60}"
        _fail(source, key, f"must be a CURVE key in z85 (40 characters, as `herdrt keys` prints){shown}")
    return value.encode("ascii")


def _bridge(herd: dict, source: str, base: Path | None, allow_readable: bool) -> BridgeConfig:
    table = _get(herd, "bridge", dict, source, "herd.", {})
    known = {"evict_after", "max_queued", "curve_secret_key_file", "curve_public_key", "allowed_client_keys"}
    for key in table:
        if key not in known:
            _fail(source, f"herd.bridge.{key}", f"unknown key (expected one of {', '.join(sorted(known))})")
    evict_after = _get(table, "evict_after", (int, float), source, "herd.bridge.", 3.0)
    if evict_after <= 0:
        _fail(source, "herd.bridge.evict_after", f"must be positive, not {evict_after}")
    max_queued = _get(table, "max_queued", int, source, "herd.bridge.", 65536)
    if max_queued <= 0:
        _fail(source, "herd.bridge.max_queued", f"must be positive, not {max_queued}")
    secret = public = None
    allowed: tuple[bytes, ...] = ()
    path_value = _get(table, "curve_secret_key_file", str, source, "herd.bridge.")
    if path_value is None:
        for key in ("curve_public_key", "allowed_client_keys"):
            if key in table:
                _fail(
                    source,
                    f"herd.bridge.{key}",
                    "needs curve_secret_key_file (CURVE is off without the server's secret key)",
                )
    else:
        path = Path(path_value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        text = read_secret_file(path, source, "herd.bridge.curve_secret_key_file", allow_readable)
        # Either the bare z85 secret key, or a `secret_key = "..."` line (as `herdrt keys` prints).
        found = re.search(r'secret[_-]key\s*=\s*"([^"]*)"', text)
        secret = _z85_key(
            found.group(1) if found else text.strip(),
            source,
            f"herd.bridge.curve_secret_key_file ({path})",
            secret=True,
        )
        import zmq  # only a herd with CURVE needs pyzmq to load its file

        try:
            derived = zmq.curve_public(secret)
        except zmq.ZMQError as exc:
            _fail(source, "herd.bridge.curve_secret_key_file", f"{path} holds no valid CURVE secret key: {exc}")
        public = derived
        if "curve_public_key" in table:
            public = _z85_key(table["curve_public_key"], source, "herd.bridge.curve_public_key")
            if public != derived:
                _fail(source, "herd.bridge.curve_public_key", "does not match the secret key in curve_secret_key_file")
        keys = _get(table, "allowed_client_keys", list, source, "herd.bridge.", required=True)
        if not keys:
            _fail(
                source,
                "herd.bridge.allowed_client_keys",
                "is empty: no service could connect; list their z85 public keys",
            )
        allowed = tuple(_z85_key(k, source, f"herd.bridge.allowed_client_keys[{i}]") for i, k in enumerate(keys))
    return BridgeConfig(float(evict_after), max_queued, secret, public, allowed)


def _tls(herd: dict, source: str, base: Path | None, allow_readable: bool) -> TlsConfig | None:
    table = _get(herd, "tls", dict, source, "herd.")
    if table is None:
        return None
    known = {"ca_file", "cert_file", "key_file", "check_names", "client_cert_file", "client_key_file"}
    for key in table:
        if key not in known:
            _fail(source, f"herd.tls.{key}", f"unknown key (expected one of {', '.join(sorted(known))})")
    where = "herd.tls."
    tls = TlsConfig(
        ca_file=_get(table, "ca_file", str, source, where, required=True),
        cert_file=_get(table, "cert_file", str, source, where, required=True),
        key_file=_get(table, "key_file", str, source, where, required=True),
        check_names=_get(table, "check_names", bool, source, where, True),
        client_cert_file=_get(table, "client_cert_file", str, source, where),
        client_key_file=_get(table, "client_key_file", str, source, where),
        base=base,
        allow_readable_key=allow_readable,
    )
    if (tls.client_cert_file is None) != (tls.client_key_file is None):
        _fail(source, "herd.tls.client_cert_file", "give client_cert_file and client_key_file together")
    if not tls.ca_path.is_file():
        _fail(source, "herd.tls.ca_file", f"cannot read {tls.ca_path}")
    # Each process reads its own certificate and key when it starts (herdrt.herd.tls): with "{node}"
    # in the names, one host need not hold the others' files.
    return tls


def parse_config(data: dict, source: str = "<herd config>", base: Path | None = None) -> HerdConfig:
    """Validate a parsed herd file (a dict as ``tomllib`` returns it)."""
    known_top = {"herd", "nodes", "app"}
    for key in data:
        if key not in known_top:
            _fail(source, key, f"unknown key (expected {', '.join(sorted(known_top))})")
    herd = _get(data, "herd", dict, source, "", default={})
    known_herd = {
        "secret",
        "secret_file",
        "secret_env",
        "allow_readable_secret_files",
        "links",
        "heartbeat_interval",
        "failure_threshold",
        "max_frame_size",
        "max_clock_skew",
        "mailbox_size",
        "mailbox_overflow",
        "apps",
        "bridge",
        "tls",
    }
    for key in herd:
        if key not in known_herd:
            _fail(source, f"herd.{key}", f"unknown key (expected one of {', '.join(sorted(known_herd))})")

    node_tables = _get(data, "nodes", list, source, "", required=True)
    if not node_tables:
        _fail(source, "nodes", "a herd needs at least one [[nodes]] entry")
    nodes: dict[str, NodeConfig] = {}
    seen_addresses: dict[tuple[str, int], str] = {}
    for i, table in enumerate(node_tables):
        where = f"nodes[{i}]."
        if not isinstance(table, dict):
            _fail(source, f"nodes[{i}]", "must be a table ([[nodes]])")
        for key in table:
            if key not in _NODE_KEYS:
                _fail(source, f"{where}{key}", f"unknown key (expected {', '.join(_NODE_KEYS)})")
        name = _get(table, "name", str, source, where, required=True)
        if not _NAME.match(name):
            _fail(source, f"{where}name", f"{name!r} is not a valid node name (letters, digits, '_', '.', '-'; 1-64)")
        if name in nodes:
            _fail(source, f"{where}name", f"duplicate node name {name!r}")
        node = NodeConfig(
            name=name,
            host=_get(table, "host", str, source, where, default="127.0.0.1"),
            port=_port(table, "port", source, where, required=True),
            app_port=_port(table, "app_port", source, where),
            bridge_port=_port(table, "bridge_port", source, where),
            http_port=_port(table, "http_port", source, where),
        )
        for key in _NODE_KEYS[2:]:
            port = getattr(node, key)
            if port is None:
                continue
            taken = seen_addresses.get((node.host, port))
            if taken:
                _fail(source, f"{where}{key}", f"{node.host}:{port} is already used by {taken}")
            seen_addresses[(node.host, port)] = f"{name}.{key}"
        nodes[name] = node

    raw_links = _get(herd, "links", list, source, "herd.")
    if raw_links is None:
        names = list(nodes)
        links = frozenset(frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1 :])
    else:
        found = set()
        for i, pair in enumerate(raw_links):
            key = f"herd.links[{i}]"
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                _fail(source, key, f'must be a pair of node names like ["A", "B"], not {pair!r}')
            for p in pair:
                if p not in nodes:
                    _fail(source, key, f"names unknown node {p!r} (nodes: {', '.join(nodes)})")
            if pair[0] == pair[1]:
                _fail(source, key, f"links node {pair[0]!r} to itself")
            found.add(frozenset(pair))
        links = frozenset(found)

    apps = _get(herd, "apps", list, source, "herd.", [])
    for i, spec in enumerate(apps):
        if not (isinstance(spec, str) and re.match(r"^[\w.]+:\w+$", spec)):
            _fail(source, f"herd.apps[{i}]", f'must be "MODULE:FUNCTION", not {spec!r}')
    overflow = _get(herd, "mailbox_overflow", str, source, "herd.", "reject")
    if overflow not in OVERFLOW_POLICIES:
        _fail(source, "herd.mailbox_overflow", f"must be one of {', '.join(OVERFLOW_POLICIES)}, not {overflow!r}")
    app = _get(data, "app", dict, source, "", {})
    for name, table in app.items():
        if not isinstance(table, dict):
            _fail(source, f"app.{name}", "must be a table ([app.NAME])")
    allow_readable = _get(herd, "allow_readable_secret_files", bool, source, "herd.", False)
    return HerdConfig(
        nodes=nodes,
        links=links,
        secret=_secret(herd, source, base, allow_readable),
        heartbeat_interval=float(_positive(herd, "heartbeat_interval", (int, float), 0.5, source)),
        failure_threshold=float(_positive(herd, "failure_threshold", (int, float), 8.0, source)),
        max_frame_size=_positive(herd, "max_frame_size", int, 1 << 20, source),
        max_clock_skew=float(_positive(herd, "max_clock_skew", (int, float), 60.0, source)),
        mailbox_size=_positive(herd, "mailbox_size", int, 1024, source),
        mailbox_overflow=overflow,
        apps=tuple(apps),
        source=source,
        bridge=_bridge(herd, source, base, allow_readable),
        tls=_tls(herd, source, base, allow_readable),
        app=app,
    )


def load_config(path: str | os.PathLike) -> HerdConfig:
    """Read and validate the herd file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the herd file: {exc.strerror or exc}") from None
    return loads_config(text, str(path), path.parent)


def loads_config(text: str, source: str = "<herd config>", base: Path | None = None) -> HerdConfig:
    """Parse and validate herd-file text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(data, source, base)


def bundled_config_text() -> str:
    """The bundled five-node herd (the location proxy herd), as TOML text."""
    return resources.files("herdrt").joinpath("data/herd.toml").read_text("utf-8")
