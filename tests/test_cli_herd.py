"""The client commands of the CLI (`status`, `tell`, `ask`, `actors`, `owner`) run as a user runs
them, against a herd of real node processes: what they print and how they exit, on success and on
each way they can fail (an unknown actor, a refused message, a node that is down, no herd at all,
a bad or too short timeout)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from _herdtest import SECRET, NodeProcesses, free_ports, node_env, wait_live
from herdrt.cli import main
from herdrt.config import load_config
from herdrt.herd.client import HerdClient

NAMES = ["Bona", "Clark", "Jaquez"]  # a line: Jaquez is two hops from Bona
LINKS = [("Bona", "Clark"), ("Clark", "Jaquez")]
UCLA = "+34.068930-118.445127"


def herd_text(names, links, *, proxy=()) -> str:
    """A herd file on free ports; the nodes of ``proxy`` run the location proxy too."""
    ports = iter(free_ports(2 * len(names)))
    text = f'[herd]\nsecret = "{SECRET}"\nheartbeat_interval = 0.2\n'
    text += "links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in links) + "]\n"
    if proxy:
        text += 'apps = ["herdrt.apps.proxy:setup"]\n'
    for name in names:
        text += f'[[nodes]]\nname = "{name}"\nport = {next(ports)}\n'
        text += f"app_port = {next(ports)}\n" if name in proxy else ""
    return text


class CliHerd(NodeProcesses):
    """The three nodes as `herdrt serve --node` processes, each running ``herd_app:setup`` (echo,
    news, the keyed kind "counter"); Bona runs the location proxy too (its peer actor "proxy")."""

    def __init__(self, tmp: Path):
        super().__init__(tmp / "out", node_env(HERDRT_PLACES_API_KEY=None))
        self.path = tmp / "herd.toml"
        self.path.write_text(herd_text(NAMES, LINKS, proxy=["Bona"]))
        self.config = load_config(self.path)
        self.log_dir = tmp / "traffic"

    def start(self, name: str) -> None:
        self.serve(name, self.path, "--app", "herd_app:setup", "--log-dir", str(self.log_dir), "--log-level", "info")


@pytest.fixture(scope="module")
def herd(tmp_path_factory):
    h = CliHerd(tmp_path_factory.mktemp("cli-herd"))
    try:
        for name in NAMES:
            h.start(name)
        for name in NAMES:
            asyncio.run(wait_live(h.config, name, NAMES))
        yield h
    finally:
        h.stop_all()


def herdrt(*args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    """Run `herdrt ARGS [--config CONFIG]` as a user would."""
    argv = [sys.executable, "-m", "herdrt.cli", *args, *(["--config", str(config)] if config else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=node_env())


def herdrt_all(*calls: tuple[str, ...], config: Path | None = None) -> list[subprocess.CompletedProcess]:
    """Several independent `herdrt` runs at once (each one is a new Python process)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: herdrt(*args, config=config), calls))


def error_line(out: subprocess.CompletedProcess) -> str:
    """The one ``Error: ...`` line of a failed command (and nothing else on stderr)."""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    return lines[0]


def log_lines(herd: CliHerd, name: str, pattern: str) -> list[str]:
    return [line for line in herd.output(name).splitlines() if re.search(pattern, line)]


# --- tell: confirmed ---------------------------------------------------------------------------------


def test_tell_is_confirmed_here_and_on_a_node_two_hops_away(herd):
    here, there, keyed = herdrt_all(
        ("tell", "Bona", "news", '"here"'),
        ("tell", "Bona", "news@Jaquez", '"there"'),
        ("tell", "Bona", "tally", "1", "--kind", "counter"),
        config=herd.path,
    )
    for out in (here, there, keyed):
        assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out
    # confirmed means in the mailbox: an ask behind it finds it handled
    here, there, counted = herdrt_all(
        ("ask", "Bona", "news", '"get"'),
        ("ask", "Clark", "news@Jaquez", '"get"'),
        ("ask", "Clark", "tally", "null", "--kind", "counter"),
        config=herd.path,
    )
    assert (here.returncode, json.loads(here.stdout)) == (0, ["here"]), here.stderr
    assert (there.returncode, json.loads(there.stdout)) == (0, ["there"]), there.stderr
    owner, count = json.loads(counted.stdout)
    assert count == 2 and owner in NAMES


def test_tell_to_an_unknown_actor_fails_and_says_how_to_list_the_actors(herd):
    local, remote, no_node, no_kind, bad_target = herdrt_all(
        ("tell", "Bona", "nosuch", '"ping"'),
        ("tell", "Bona", "nosuch@Jaquez", '"ping"'),
        ("tell", "Bona", "echo@Nowhere", '"ping"'),
        ("tell", "Bona", "k", "1", "--kind", "nokind"),
        ("tell", "Bona", "@Clark"),
        config=herd.path,
    )
    config = f"--config {herd.path}"
    assert local.returncode == 1 and local.stdout == ""
    assert error_line(local) == (
        f"Error: tell nosuch@Bona: no actor 'nosuch' on node Bona; `herdrt actors Bona {config}` lists the actors "
        "on Bona"
    )
    assert remote.returncode == 1
    assert error_line(remote) == (
        "Error: tell nosuch@Jaquez: no actor 'nosuch' on node Jaquez; "
        f"`herdrt actors Jaquez {config}` lists the actors on Jaquez"
    )
    assert no_node.returncode == 1
    assert error_line(no_node) == (
        "Error: tell echo@Nowhere: 'Nowhere' is not a node of this herd (nodes: Bona, Clark, Jaquez); "
        f"`herdrt status {config}` shows which nodes are up"
    )
    assert no_kind.returncode == 1
    assert "no actor kind 'nokind' is registered on Bona" in error_line(no_kind)
    assert f"`herdrt actors Bona {config}` lists the kinds of keyed actors running on Bona" in no_kind.stderr
    assert bad_target.returncode == 2 and "bad target '@Clark': use NAME or NAME@NODE" in bad_target.stderr


# --- refusals: the asker's error, INFO on the node ------------------------------------------------------


def test_a_refused_proxy_record_is_an_error_to_the_asker_and_a_told_one_stays_quiet(herd):
    record = {"v": 1, "server": "Clark", "skew": "+0.5", "client": "cli-test.example", "location": UCLA}
    record["time"] = f"{time.time():.9f}"
    bad, told = herdrt_all(
        ("ask", "Bona", "proxy", '{"k": 1}'),
        ("tell", "Bona", "proxy", '{"k": 2}'),  # the flood path: delivered, the store refuses it quietly
        config=herd.path,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert error_line(bad) == (
        "Error: ask proxy@Bona: refused: not a valid AT record (unsupported AT record version None); proxy takes "
        'AT records from neighbors: {"v": 1, "server": S, "skew": S, "client": S, "location": S, "time": S}, '
        "strings as in the AT line"
    )
    assert told.returncode == 0 and told.stderr == ""
    stored = herdrt("ask", "Bona", "proxy", json.dumps(record), config=herd.path)
    assert (stored.returncode, json.loads(stored.stdout)) == (0, {"stored": True}), stored.stderr
    again = herdrt("ask", "Bona", "proxy", json.dumps(record), config=herd.path)
    assert (again.returncode, json.loads(again.stdout)) == (0, {"stored": False}), again.stderr
    # On the node: the ask's refusal at INFO without a traceback; the tell's only in the store's counters
    refusals = log_lines(herd, "Bona", r"herdrt\.actor: actor proxy@Bona refused")
    assert len(refusals) == 1 and " INFO " in refusals[0] and "{'k': 1}" in refusals[0]
    assert "Traceback" not in herd.output("Bona")


def test_an_unknown_admin_request_is_refused_at_info_without_a_traceback(herd):
    bogus, no_args = herdrt_all(
        ("ask", "Clark", "$node", '"bogus"'), ("ask", "Clark", "$node", '{"op": "owner"}'), config=herd.path
    )
    assert bogus.returncode == 1 and bogus.stdout == ""
    assert error_line(bogus).startswith("Error: ask $node@Clark: refused: unknown admin request 'bogus'; ask 'status'")
    assert no_args.returncode == 1
    assert "refused: 'owner' needs a string 'kind' and 'key', not None and None" in error_line(no_args)
    lines = log_lines(herd, "Clark", r"\$node@Clark")  # (rate-limited per actor: the second may be held back)
    assert lines and all(" INFO " in line and " refused " in line for line in lines), lines
    assert "Traceback" not in herd.output("Clark") and " ERROR " not in herd.output("Clark")
    actors = json.loads(herdrt("actors", "Clark", "--json", config=herd.path).stdout)
    admin = next(row for row in actors["actors"] if row["name"] == "$node")
    assert admin["failures"] == 0 and admin["restarts"] == 0  # a refusal is no failure


def test_a_handler_that_raises_is_reported_as_such(herd):
    out = herdrt("ask", "Jaquez", "echo", '"boom"', config=herd.path)
    assert out.returncode == 1
    assert error_line(out) == (
        "Error: ask echo@Jaquez: the handler raised KeyError: 'boom' (the node running it logs the traceback)"
    )


# --- actors and owner ----------------------------------------------------------------------------------


async def ask_counters(config, keys) -> dict[str, str]:
    """Ask the keyed counter of each of ``keys`` (activating it): {key: the node that answered}."""
    async with HerdClient(config, "Clark") as client:
        return {key: (await client.ask(key, None, kind="counter"))[0] for key in keys}


def test_actors_lists_named_actors_and_keyed_ones_per_kind(herd):
    placed = asyncio.run(ask_counters(herd.config, [f"k{i}" for i in range(6)]))
    answers = herdrt_all(*[("actors", name) for name in NAMES], ("actors", "Bona", "--json"), config=herd.path)
    running = 0
    for name, out in zip(NAMES, answers, strict=False):
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        head = re.fullmatch(
            rf"{name}: {4 if name == 'Bona' else 3} named actors, (\d+) keyed actors? \((\d) kinds?\)", lines[0]
        )
        assert head, lines[0]
        named = {"$node", "echo", "news", *(["proxy"] if name == "Bona" else [])}
        rows = {line.split()[0]: line.split()[1:] for line in lines[3 : 3 + len(named)]}
        assert set(rows) == named
        assert rows["echo"][-1] == "0/1,024" and rows["$node"][-1] == "0/256"
        if name == "Bona":
            assert rows["proxy"][-1] == "0/unbounded"
        keyed = int(head.group(1))
        assert keyed >= sum(owner == name for owner in placed.values())  # (other tests' keys too)
        if keyed:
            kind = next(line for line in lines if line.startswith("counter "))
            assert int(kind.split()[1]) == keyed
        running += keyed
    assert running >= 6
    report = json.loads(answers[-1].stdout)
    assert report["node"] == "Bona" and {row["name"] for row in report["actors"]} == {"$node", "echo", "news", "proxy"}


def test_owner_names_the_node_a_key_lives_on(herd):
    keys = ["alice", "bob", "carol"]
    placed = asyncio.run(ask_counters(herd.config, keys))
    *owners, unregistered = herdrt_all(
        *[("owner", "counter", key) for key in keys], ("owner", "nokind", "x"), config=herd.path
    )
    for key, out in zip(keys, owners, strict=False):
        assert out.returncode == 0 and out.stderr == "", out.stderr
        assert re.fullmatch(
            rf"counter:{key} is owned by {placed[key]} \(on the ring of the 3 live nodes Bona, Clark, Jaquez, "
            r"as \w+ sees it\)",
            out.stdout.strip(),
        ), out.stdout
    assert unregistered.returncode == 0
    assert unregistered.stderr.startswith("note: no actor kind 'nokind' is registered on ")


# --- nodes down, no herd -------------------------------------------------------------------------------


def test_status_and_owner_when_no_herd_runs(tmp_path):
    path = tmp_path / "nobody.toml"
    path.write_text(herd_text(["a", "b"], [("a", "b")]))
    where = ", ".join(f"127.0.0.1:{n.port}" for n in load_config(path).nodes.values())
    status, as_json, owner, actors = herdrt_all(
        ("status",), ("status", "--json"), ("owner", "counter", "x"), ("actors", "a"), config=path
    )
    expected = f"Error: no herd running at {where}; start one with `herdrt serve --config {path}`"
    assert status.returncode == 1 and status.stdout == "" and error_line(status) == expected
    assert owner.returncode == 1 and owner.stdout == "" and error_line(owner) == expected
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {"a": {"error": "connection refused"}, "b": {"error": "connection refused"}}
    assert actors.returncode == 1
    assert error_line(actors) == (
        f"Error: actors of a: cannot reach node a at 127.0.0.1:{load_config(path).node('a').port} (connection "
        f"refused); is the herd running? `herdrt status --config {path}` shows which nodes are up"
    )


def test_status_with_a_node_down_and_consistent_totals(herd, tmp_path):
    ghost = tmp_path / "ghost.toml"  # the herd's file plus a node nobody runs
    ghost.write_text(herd.path.read_text() + f'[[nodes]]\nname = "Ghost"\nport = {free_ports(1)[0]}\n')
    table, as_json = herdrt_all(("status",), ("status", "--json"), config=ghost)
    full = herdrt("status", config=herd.path)
    assert table.returncode == 1 and table.stderr == ""
    assert re.search(r"^Ghost +DOWN \(connection refused\)$", table.stdout, re.M), table.stdout
    assert "3 answering" in table.stdout
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["Ghost"] == {"error": "connection refused"}
    assert full.returncode == 0, full.stderr
    for out in (table, full):
        totals = re.search(r"handler time mean (\S+(?: ms)?), max (\S+(?: ms)?);", out.stdout)
        assert totals and totals.group(1) != "-" and totals.group(2) != "-", out.stdout


def test_status_totals_say_dash_for_both_when_nothing_was_handled(tmp_path):
    """A node that has handled no message yet: the first status it answers has no sample."""
    path = tmp_path / "one.toml"
    path.write_text(herd_text(["solo"], []))
    procs = NodeProcesses(tmp_path / "out")
    procs.serve("solo", path)
    try:
        deadline = time.monotonic() + 20
        while (out := herdrt("status", config=path)).returncode:  # not up yet: its admin actor handled nothing
            assert time.monotonic() < deadline, procs.output("solo")
            time.sleep(0.1)
        assert "herd-wide: 0 messages; handler time mean -, max -; mailbox wait mean" in out.stdout, out.stdout
    finally:
        procs.stop_all()


# --- timeouts ---------------------------------------------------------------------------------------------


def test_a_timeout_must_be_positive(tmp_path):
    path = tmp_path / "h.toml"
    path.write_text(herd_text(["a"], []))
    commands = [("status",), ("tell", "a", "echo"), ("ask", "a", "echo"), ("actors", "a"), ("owner", "k", "x")]
    for args in [*commands, ("top", "--once")]:
        for value in ("0", "-1"):  # refused while parsing (in this process: nothing runs)
            out = CliRunner().invoke(main, [*args, "--timeout", value, "--config", str(path)])
            assert out.exit_code == 2, (args, out.output)
            assert f"Invalid value for '--timeout': {float(value)} is not in the range x>0." in out.output, args


def test_timeouts_say_what_timed_out_and_after_how_long(herd, tmp_path):
    mute = socket.socket()  # takes connections, never answers the handshake
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    try:
        stuck = tmp_path / "stuck.toml"
        port = mute.getsockname()[1]
        stuck.write_text(re.sub(r"(?m)^port = \d+$", f"port = {port}", herd_text(["a"], [])))
        ask, status = herdrt_all(("ask", "a", "echo", "--timeout", "0.3"), ("status", "--timeout", "0.3"), config=stuck)
        slow = herdrt("ask", "Bona", "echo", '{"sleep": 2}', "--timeout", "0.3", config=herd.path)
    finally:
        mute.close()
    assert ask.returncode == 1
    assert error_line(ask) == f"Error: ask echo@a: no link to node a at 127.0.0.1:{port} within 0.3s"
    assert status.returncode == 1 and re.search(r"^a +DOWN \(no answer within 0\.3s\)$", status.stdout, re.M)
    assert slow.returncode == 1
    assert error_line(slow) == "Error: ask echo@Bona: no reply from echo via Bona within 0.3s"
