"""The herd file: valid files load; every invalid one names the file, the key and the problem."""

import pytest

from herdrt.config import ConfigError, bundled_config_text, load_config, loads_config

GOOD = """
[herd]
secret = "s3cret-s3cret"
links = [["a", "b"], ["b", "c"]]
heartbeat_interval = 0.25

[[nodes]]
name = "a"
port = 7001
app_port = 8001

[[nodes]]
name = "b"
host = "127.0.0.2"
port = 7002

[[nodes]]
name = "c"
port = 7003
bridge_port = 9003
http_port = 9103
"""


def test_good_file_loads(tmp_path):
    path = tmp_path / "herd.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert list(cfg.nodes) == ["a", "b", "c"]
    assert cfg.node("b").address == ("127.0.0.2", 7002)
    assert cfg.node("a").host == "127.0.0.1"  # loopback unless told otherwise
    assert cfg.node("a").app_port == 8001 and cfg.node("c").bridge_port == 9003
    assert cfg.node("c").http_port == 9103 and cfg.node("a").http_port is None
    assert cfg.neighbors("b") == ["a", "c"] and cfg.neighbors("a") == ["b"]
    assert cfg.secret == b"s3cret-s3cret"
    assert cfg.heartbeat_interval == 0.25 and cfg.failure_threshold == 8.0
    assert cfg.mailbox_overflow == "reject" and cfg.max_frame_size == 1 << 20
    assert "s3cret" not in repr(cfg)  # secrets stay out of logs


def test_links_default_to_a_full_mesh():
    cfg = loads_config(GOOD.replace('links = [["a", "b"], ["b", "c"]]', ""))
    assert cfg.neighbors("a") == ["b", "c"] and len(cfg.links) == 3


def write_private(path, text: str) -> None:
    """Write a secret file as `herdrt keys` and `serve` do: readable by its owner only."""
    path.write_text(text)
    path.chmod(0o600)


def test_secret_from_file_and_environment(tmp_path, monkeypatch):
    write_private(tmp_path / "secret.txt", "from-a-file-123\n")
    path = tmp_path / "herd.toml"
    path.write_text(GOOD.replace('secret = "s3cret-s3cret"', 'secret_file = "secret.txt"'))
    assert load_config(path).secret == b"from-a-file-123"  # relative to the herd file
    monkeypatch.setenv("MY_HERD_SECRET", "from-the-env-456")
    cfg = loads_config(GOOD.replace('secret = "s3cret-s3cret"', 'secret_env = "MY_HERD_SECRET"'))
    assert cfg.secret == b"from-the-env-456"


def test_bundled_herd(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".herdrt").mkdir()
    write_private(tmp_path / ".herdrt" / "bundled-secret", "bundled-test-secret\n")
    cfg = loads_config(bundled_config_text(), "bundled")
    assert cfg.secret == b"bundled-test-secret"
    assert list(cfg.nodes) == ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
    assert [cfg.node(n).app_port for n in cfg.nodes] == [12000, 12001, 12002, 12003, 12004]
    assert cfg.neighbors("Campbell") == ["Bailey", "Bona", "Jaquez"]
    assert cfg.neighbors("Clark") == ["Bona", "Jaquez"]
    assert len(cfg.links) == 6


@pytest.mark.parametrize(
    "old, new, key, problem",
    [
        ("port = 7001", 'port = "7001"', "nodes[0].port", "must be int"),
        ("port = 7001", "port = 70001", "nodes[0].port", "between 1 and 65535"),
        ("port = 7001\n", "", "nodes[0].port", "is required"),
        ('name = "b"', 'name = "a"', "nodes[1].name", "duplicate node name"),
        ('name = "b"', 'name = "b b"', "nodes[1].name", "not a valid node name"),
        ("port = 7003", "port = 7001", "nodes[2].port", "already used by a.port"),
        ("http_port = 9103", "http_port = 9003", "nodes[2].http_port", "already used by c.bridge_port"),
        ("http_port = 9103", "http_port = 0", "nodes[2].http_port", "between 1 and 65535"),
        (
            "http_port = 9103",
            "web_port = 9103",
            "nodes[2].web_port",
            "unknown key (expected name, host, port, app_port",
        ),
        ('["b", "c"]', '["b", "z"]', "herd.links[1]", "unknown node 'z'"),
        ('["b", "c"]', '["b"]', "herd.links[1]", "pair of node names"),
        ('["b", "c"]', '["c", "c"]', "herd.links[1]", "to itself"),
        ("heartbeat_interval = 0.25", "heartbeat_interval = -1", "herd.heartbeat_interval", "positive"),
        ("heartbeat_interval = 0.25", 'mailbox_overflow = "explode"', "herd.mailbox_overflow", "block, reject"),
        ("heartbeat_interval = 0.25", "heartbeat = 1", "herd.heartbeat", "unknown key"),
        ('secret = "s3cret-s3cret"', 'secret = "short"', "herd.secret", "at least 8"),
        ('secret = "s3cret-s3cret"', "", "herd.secret", "exactly one of"),
        (
            'secret = "s3cret-s3cret"',
            'secret = "s3cret-s3cret"\nsecret_env = "X"',
            "herd.secret",
            "found secret, secret_env",
        ),
        ('secret = "s3cret-s3cret"', 'secret_env = "HERDRT_TEST_UNSET_VAR"', "herd.secret_env", "unset or empty"),
        ('secret = "s3cret-s3cret"', 'secret_file = "/nonexistent/secret"', "herd.secret_file", "cannot read"),
        ("app_port = 8001", 'colour = "red"', "nodes[0].colour", "unknown key"),
    ],
)
def test_invalid_files_name_file_key_and_problem(tmp_path, old, new, key, problem):
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message, message


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the herd file"):
        load_config(tmp_path / "missing.toml")
    path = tmp_path / "broken.toml"
    path.write_text("[herd\nsecret=")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="at least one"):
        loads_config('nodes = []\n[herd]\nsecret = "s3cret-s3cret"\n')


def test_unknown_node_lookup_lists_the_names():
    cfg = loads_config(GOOD)
    with pytest.raises(ConfigError, match="no node named 'zz' \\(nodes: a, b, c\\)"):
        cfg.node("zz")


# --- [herd.bridge] ---------------------------------------------------------------------------------


def _curve_files(tmp_path):
    import zmq

    server_public, server_secret = zmq.curve_keypair()
    client_public, _ = zmq.curve_keypair()
    write_private(tmp_path / "bridge.key", server_secret.decode() + "\n")
    table = (
        f'\n[herd.bridge]\nevict_after = 1.5\nmax_queued = 100\ncurve_secret_key_file = "bridge.key"\n'
        f'curve_public_key = "{server_public.decode()}"\nallowed_client_keys = ["{client_public.decode()}"]\n'
    )
    return table, server_public, server_secret, client_public


def test_bridge_defaults_and_curve_settings(tmp_path):
    cfg = loads_config(GOOD)
    assert cfg.bridge.evict_after == 3.0 and cfg.bridge.max_queued == 65536 and not cfg.bridge.curve
    table, server_public, server_secret, client_public = _curve_files(tmp_path)
    path = tmp_path / "herd.toml"
    path.write_text(GOOD + table)
    b = load_config(path).bridge
    assert b.curve and b.evict_after == 1.5 and b.max_queued == 100
    assert b.curve_secret_key == server_secret and b.curve_public_key == server_public
    assert b.allowed_client_keys == (client_public,)
    assert server_secret.decode() not in repr(b)  # the secret key stays out of logs
    # a `herdrt keys`-style file (`secret_key = "..."`) works too, and the public key is optional
    write_private(tmp_path / "bridge.key", f'public_key = "x"\nsecret_key = "{server_secret.decode()}"\n')
    path.write_text(GOOD + table.replace(f'curve_public_key = "{server_public.decode()}"\n', ""))
    assert load_config(path).bridge.curve_public_key == server_public


@pytest.mark.parametrize(
    "edit, key, problem",
    [
        (lambda t: t.replace("evict_after = 1.5", "evict_after = 0"), "herd.bridge.evict_after", "positive"),
        (
            lambda t: t.replace("evict_after = 1.5", 'evict_after = "soon"'),
            "herd.bridge.evict_after",
            "must be int or float",
        ),
        (lambda t: t.replace("max_queued = 100", "max_queued = -1"), "herd.bridge.max_queued", "positive"),
        (lambda t: t.replace("max_queued = 100", "colour = 1"), "herd.bridge.colour", "unknown key"),
        (lambda t: t.replace('"bridge.key"', '"missing.key"'), "herd.bridge.curve_secret_key_file", "cannot read"),
        (
            lambda t: t.replace("allowed_client_keys = [", 'allowed_client_keys = ["short", '),
            "herd.bridge.allowed_client_keys[0]",
            "z85",
        ),
        (
            lambda t: t.replace("allowed_client_keys = [", "x = [").replace("x = [", "allowed_client_keys = []\nx = ["),
            "herd.bridge.x",
            "unknown key",
        ),
        (lambda t: t.split("allowed_client_keys")[0], "herd.bridge.allowed_client_keys", "is required"),
        (
            lambda t: t.split("allowed_client_keys")[0] + "allowed_client_keys = []\n",
            "herd.bridge.allowed_client_keys",
            "is empty",
        ),
        (
            lambda t: t.replace("curve_secret_key_file", "#"),
            "herd.bridge.curve_public_key",
            "needs curve_secret_key_file",
        ),
    ],
)
def test_invalid_bridge_tables_name_file_key_and_problem(tmp_path, edit, key, problem):
    table, *_ = _curve_files(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text(GOOD + edit(table))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}"), message
    assert problem in message, message


def test_bridge_public_key_must_match_the_secret_key(tmp_path):
    import zmq

    table, server_public, *_ = _curve_files(tmp_path)
    other_public, _ = zmq.curve_keypair()
    path = tmp_path / "bad.toml"
    path.write_text(GOOD + table.replace(server_public.decode(), other_public.decode()))
    with pytest.raises(ConfigError, match="herd.bridge.curve_public_key: does not match"):
        load_config(path)
    write_private(tmp_path / "bridge.key", "not a key, but secret-looking text\n")
    with pytest.raises(ConfigError, match="curve_secret_key_file .*z85") as info:
        load_config(path)
    assert "secret-looking" not in str(info.value)  # the file's content is never shown


def test_secret_files_readable_by_others_are_refused_unless_allowed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("readable-by-all-123\n")
    secret.chmod(0o644)
    path = tmp_path / "herd.toml"
    path.write_text(GOOD.replace('secret = "s3cret-s3cret"', 'secret_file = "secret.txt"'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "herd.secret_file" in message and "mode 0644" in message and f"chmod 600 {secret}" in message
    assert "readable-by-all" not in message
    secret.chmod(0o640)  # group-readable counts too
    with pytest.raises(ConfigError, match="mode 0640"):
        load_config(path)
    path.write_text(path.read_text().replace("[herd]\n", "[herd]\nallow_readable_secret_files = true\n"))
    assert load_config(path).secret == b"readable-by-all-123"
    # the CURVE secret key file is held to the same rule
    table, *_ = _curve_files(tmp_path)
    (tmp_path / "bridge.key").chmod(0o604)
    path.write_text(GOOD + table)
    with pytest.raises(ConfigError, match="herd.bridge.curve_secret_key_file: .*[(]mode 0604[)]"):
        load_config(path)


@pytest.mark.parametrize("value", ["12345", '["hunter2-hunter2"]', '{ s = "hunter2-hunter2" }', "true"])
def test_a_malformed_inline_secret_is_never_printed(value):
    with pytest.raises(ConfigError) as info:
        loads_config(GOOD.replace('secret = "s3cret-s3cret"', f"secret = {value}"))
    message = str(info.value)
    assert "herd.secret" in message and "must be str" in message
    assert "hunter2" not in message and "12345" not in message
