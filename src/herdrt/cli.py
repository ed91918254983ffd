"""The ``herdrt`` command line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import click

from . import __version__
from .core import IMPLEMENTATION, HashRing, jump_hash, md5_shard


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="herdrt", message=f"%(prog)s %(version)s (core: {IMPLEMENTATION})")
def main():
    """herdrt: a herd of cooperating actor nodes passing msgpack messages.

    Run `herdrt COMMAND --help` for the options of each command.
    """


# --- herdrt ring ---------------------------------------------------------------------------------


def _first_letter_shard(word: str, n: int) -> int:
    """The naive scheme: split the alphabet into n contiguous ranges (a-e, f-j, ...)."""
    c = word[:1].lower()
    letter = ord(c) - ord("a") if "a" <= c <= "z" else 0
    return letter * n // 26


def _jump_key(word: str) -> int:
    """jump_hash wants a 64-bit integer: the first 8 bytes of the word's MD5, little-endian."""
    return int.from_bytes(hashlib.md5(word.encode("utf-8")).digest()[:8], "little")


def _read_words(words_file: Path | None) -> tuple[list[str], str]:
    if words_file is None:
        text = resources.files("herdrt").joinpath("data/words.txt").read_text("utf-8")
        source = "the bundled word list"
    else:
        text = words_file.read_text("utf-8", errors="replace")
        source = str(words_file)
    words = list(dict.fromkeys(w for w in text.split() if w))  # unique, in order
    return words, source


@main.command(short_help="Compare ways of spreading words over servers.")
@click.argument("words_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--servers", default=5, show_default=True, type=click.IntRange(1, 1000), help="How many servers.")
@click.option(
    "--vnodes",
    default=160,
    show_default=True,
    type=click.IntRange(4, 4096),
    help="Ring points per server (a multiple of 4).",
)
def ring(words_file: Path | None, servers: int, vnodes: int):
    """Spread words over servers three ways and show which stays even.

    Places every word of WORDS_FILE (whitespace-separated; default: a bundled English word list)
    on N servers by first letter, by MD5 modulo N, and by the MD5 hash ring, printing each
    server's count and share. Then adds one server and prints the fraction of words that move
    under MD5 modulo N, the ring and jump consistent hash.
    """
    if vnodes % 4:
        raise click.BadParameter(
            f"{vnodes} is not a multiple of 4 (each MD5 digest gives 4 points)", param_hint="--vnodes"
        )
    words, source = _read_words(words_file)
    if not words:
        raise click.UsageError(f"{source} holds no words; give a text file with whitespace-separated words")
    names = [f"server-{i}" for i in range(servers)]
    hring = HashRing(names, vnodes=vnodes)
    schemes = {
        "first letter": [names[_first_letter_shard(w, servers)] for w in words],
        "md5 % n": [names[md5_shard(w, servers)] for w in words],
        f"ring ({vnodes} vnodes)": [hring.lookup(w) for w in words],
    }
    total = len(words)
    click.echo(f"{total:,} words from {source} over {servers} servers (core: {IMPLEMENTATION})\n")
    width = max(len(n) for n in names) + 2
    header = "".join(f"{label:>22}" for label in schemes)
    click.echo(f"{'server':<{width}}{header}")
    counts = {label: {n: 0 for n in names} for label in schemes}
    for label, owners in schemes.items():
        for owner in owners:
            counts[label][owner] += 1
    for name in names:
        row = "".join(f"{counts[label][name]:>12,} {counts[label][name] / total:>8.1%}" for label in schemes)
        click.echo(f"{name:<{width}}{row}")
    spread = "".join(f"{max(c.values()) / (total / servers):>21.2f}x" for c in counts.values())
    click.echo(f"{'max/mean':<{width}}{spread}")

    grown = servers + 1
    new_name = f"server-{servers}"
    hring.add(new_name)
    moved_mod = sum(md5_shard(w, servers) != md5_shard(w, grown) for w in words)
    moved_ring = sum(old != hring.lookup(w) for w, old in zip(words, schemes[f"ring ({vnodes} vnodes)"], strict=False))
    moved_jump = sum(jump_hash(k, servers) != jump_hash(k, grown) for k in map(_jump_key, words))
    click.echo(f"\nwords that move when {new_name} joins (ideal: 1/{grown} = {1 / grown:.1%}):")
    for label, moved in (("md5 % n", moved_mod), ("ring", moved_ring), ("jump hash", moved_jump)):
        click.echo(f"  {label:<10}{moved:>10,} {moved / total:>8.1%}")


# --- herdrt serve / status / tell / ask ------------------------------------------------------------

#: A timeout: seconds, more than zero (`--timeout 0` would fail every request at once).
_SECONDS = click.FloatRange(min=0, min_open=True)


def _timeout_option(default: float, help: str):
    return click.option("--timeout", default=default, show_default=True, type=_SECONDS, metavar="SECONDS", help=help)


_config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Herd file (TOML). Default: the bundled five-node herd (see `herdrt serve --print-config`).",
)


def _config(config_path, *, create_secret=False):
    from .config import ConfigError
    from .serve import load_herd_config

    try:
        return load_herd_config(config_path, create_secret=create_secret)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@_config_option
@click.option("-n", "--node", "node_name", help="Run only this node of the herd, in this process.")
@click.option(
    "--app",
    "apps",
    multiple=True,
    metavar="MODULE:FUNCTION",
    help="Call FUNCTION(node) on every node at start-up (spawn actors, register kinds). Repeatable.",
)
@click.option("--print-config", is_flag=True, help="Print the bundled herd file and exit.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False),
    help="Where applications write per-node traffic logs (the location proxy: DIR/<node>.log). "
    "Default: the herd's state directory, ~/.herdrt/herds/<herd>/logs.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Run the herd in the background (output in its state directory); return once it is ready. "
    "`herdrt stop` stops it.",
)
@click.option("--asyncio", "use_asyncio", is_flag=True, help="Run on stdlib asyncio instead of uvloop.")
@click.option(
    "--bridge-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="With --node: run that node's ZMQ bridge on PORT (overrides bridge_port in the herd file).",
)
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="With --node: serve that node's /metrics, /healthz and herd page on PORT (overrides http_port).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def serve(config_path, node_name, apps, print_config, log_dir, detach, use_asyncio, bridge_port, http_port, log_level):
    """Run a herd.

    With no options: the bundled herd, five nodes on 127.0.0.1, each its own OS process,
    restarted if it dies, each serving the location proxy (IAMAT / WHATSAT) on its app port and
    its metrics and herd page on its HTTP port; Ctrl-C stops them all. `--config herd.toml` runs
    every node of that file the same way; add `--node NAME` to run just that node in this process
    (one per host in a real deployment). A node that cannot start (a port in use, an app that
    fails) stops the whole herd, with its error and a non-zero exit.
    """
    from .config import bundled_config_text
    from .serve import FATAL_EXIT, StartupError, load_app, run_herd, run_node, state_dir
    from .serve import detach as run_detached

    if print_config:
        click.echo(bundled_config_text(), nl=False)
        return
    if node_name is None and (bridge_port is not None or http_port is not None):
        raise click.UsageError("--bridge-port and --http-port need --node (they set the ports of one node)")
    if detach and node_name is not None:
        raise click.UsageError("--detach runs a whole herd; run one node in the background with your service manager")
    _setup_logging(log_level)
    config = _config(config_path, create_secret=True)
    if node_name is not None and node_name not in config.nodes:
        raise click.BadParameter(
            f"{node_name!r} is not a node of {config.source} (nodes: {', '.join(config.nodes)})", param_hint="--node"
        )
    try:  # here, in both modes: a bad app is a usage error before any node starts
        hooks = [load_app(spec) for spec in (*config.apps, *apps)]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--app") from None
    logs = Path(log_dir) if log_dir else state_dir(config_path) / "logs"
    os.environ["HERDRT_LOG_DIR"] = str(logs.resolve())  # node processes inherit it
    if node_name is None:
        if detach:
            argv = [sys.executable, "-m", "herdrt.cli", *[a for a in sys.argv[1:] if a != "--detach"]]
            sys.exit(run_detached(argv, config, config_path))
        sys.exit(run_herd(config, config_path, list(apps), echo=click.echo, log_dir=logs, log_level=log_level))
    ports = {k: v for k, v in (("bridge_port", bridge_port), ("http_port", http_port)) if v is not None}
    if ports:
        from dataclasses import replace

        nodes = dict(config.nodes)
        nodes[node_name] = replace(nodes[node_name], **ports)
        config = replace(config, nodes=nodes)
    try:
        run_node(config, node_name, hooks, use_uvloop=not use_asyncio)
    except StartupError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = FATAL_EXIT  # not restarted by `herdrt serve`: it stops the herd
        raise error from None


@main.command(short_help="Stop a herd started with `herdrt serve --detach`.")
@_config_option
@_timeout_option(20.0, "Seconds to wait for the herd to stop.")
def stop(config_path, timeout):
    """Stop the herd that `herdrt serve --detach` started from this herd file (or the bundled
    herd): SIGTERM to its `herdrt serve` (found by the pid file in the herd's state directory),
    which stops every node; waits until it has exited. Exits 1 if no such herd runs."""
    from .serve import stop_herd

    config = _config(config_path)
    stopped, message = stop_herd(config, config_path, timeout=timeout)
    click.echo(message, err=not stopped)
    if not stopped:
        sys.exit(1)


@main.command(short_help="Make a random secret for a herd file.")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write it to this new file (mode 0600) instead of printing it.",
)
def secret(path):
    """Make a random shared secret for a herd (43 URL-safe characters). Point the herd file at it
    with `secret_file = "PATH"` under [herd] (or export it and use `secret_env`); every node and
    every client of the herd needs the same one."""
    import secrets as random_secrets

    from .serve import make_secret_file

    if path is None:
        click.echo(random_secrets.token_urlsafe(32))
        return
    try:
        make_secret_file(path)
    except OSError as exc:
        raise click.ClickException(f"cannot create {path}: {exc.strerror or exc}") from None
    click.echo(f'secret written to {path} (mode 0600); in the herd file: secret_file = "{path}"')


def _with_config(config_path) -> str:
    """`` --config PATH`` when the command was given one: for the commands an error suggests."""
    import shlex

    return f" --config {shlex.quote(str(config_path))}" if config_path else ""


def _quiet_client_logs() -> None:
    """The client commands report failures themselves: keep the herd layer's warnings (a refused
    handshake, ...) from printing the same thing again on stderr."""
    logging.getLogger("herdrt").setLevel(logging.ERROR)


def _why_down(exc: BaseException, timeout: float) -> str:
    """Why a node did not answer, in a few words (a row of `herdrt status`)."""
    from .errors import HerdError
    from .herd.link import LinkRefused

    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, LinkRefused):
        return f"link refused: {exc.reason}"
    if isinstance(exc, HerdError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _nobody_answered(config, config_path, answers: dict, timeout: float) -> click.ClickException:
    """The error when no node of ``config`` answered: no herd runs there when every connection
    was refused; else each node's reason."""
    if all(isinstance(a, ConnectionRefusedError) for a in answers.values()):
        where = ", ".join(f"{n.host}:{n.port}" for n in config.nodes.values())
        return click.ClickException(
            f"no herd running at {where}; start one with `herdrt serve{_with_config(config_path)}`"
        )
    reasons = "; ".join(f"{name}: {_why_down(exc, timeout)}" for name, exc in answers.items())
    return click.ClickException(f"no node of the herd answered ({reasons})")


async def _ask_admins(config, names, request, timeout, *, first=False):
    """Ask the admin actor of each node of ``names`` ``request``, at once: {node: its reply, or the
    exception that kept it from answering}. ``first``: stop at the first reply (only that node
    then has a reply; the others that failed by then have their exceptions)."""
    from .herd import ADMIN_ACTOR
    from .herd.client import HerdClient

    async def one(name):
        try:
            async with asyncio.timeout(timeout):
                client = await HerdClient(config, name).connect(timeout)
                try:
                    return name, await client.ask(ADMIN_ACTOR, request, timeout=timeout)
                finally:
                    await client.close()
        except Exception as exc:  # down, refused, wrong secret: report it, keep going
            return name, exc

    if not first:
        return dict(await asyncio.gather(*(one(name) for name in names)))
    answers = {}
    tasks = [asyncio.ensure_future(one(name)) for name in names]
    try:
        for done in asyncio.as_completed(tasks):
            name, answer = await done
            answers[name] = answer
            if not isinstance(answer, Exception):
                return {name: answer}
        return answers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _query_all(config, timeout):
    return await _ask_admins(config, list(config.nodes), "status", timeout)


def _ms(stats) -> str:
    return "-" if not stats or not stats.get("count") else f"{stats['mean'] * 1e3:.3f} ms"


def _max_ms(stats) -> str:
    return "-" if not stats or not stats.get("count") else f"{stats['max'] * 1e3:.3f} ms"


@main.command(short_help="Show which nodes are up, their links, actors and message statistics.")
@_config_option
@_timeout_option(2.0, "Seconds to wait for each node.")
@click.option("--json", "as_json", is_flag=True, help="Print every node's raw status as JSON.")
def status(config_path, timeout, as_json):
    """Show the herd: which nodes are up, their links, ring shares, actors and message statistics
    (merged herd-wide). Exits 1 if a node does not answer; when none does because nothing listens
    at the addresses of the herd file, says that no herd runs there."""
    from .core import OnlineStats

    _quiet_client_logs()
    config = _config(config_path)
    answers = asyncio.run(_query_all(config, timeout))
    down = {n: _why_down(a, timeout) for n, a in answers.items() if not isinstance(a, dict)}
    if as_json:
        click.echo(
            json.dumps(
                {n: (a if isinstance(a, dict) else {"error": down[n]}) for n, a in answers.items()},
                indent=2,
                default=str,
            )
        )
        if down:
            sys.exit(1)
        return
    if all(isinstance(a, ConnectionRefusedError) for a in answers.values()):
        raise _nobody_answered(config, config_path, answers, timeout)
    up = {n: a for n, a in answers.items() if isinstance(a, dict)}
    click.echo(f"herd of {len(config.nodes)} nodes from {config.source}: {len(up)} answering\n")
    shares = next(iter(up.values()))["ring_share"] if up else {}
    click.echo(
        f"{'node':<12}{'state':<8}{'links':<32}{'sees':<7}{'actors':>7}{'ring':>8}{'messages':>10}{'handler':>12}"
        f"{'dead':>8}"
    )
    handler, wait = OnlineStats(), OnlineStats()
    messages = 0
    dead: dict[str, int] = {}
    for name in config.nodes:
        a = answers[name]
        if not isinstance(a, dict):
            click.echo(f"{name:<12}DOWN ({down[name]})")
            continue
        total = a["stats"]
        messages += total["messages"]
        handler.merge(OnlineStats.from_dict(total["handler_time"]))
        wait.merge(OnlineStats.from_dict(total["mailbox_wait"]))
        links = ", ".join(sorted(a["links"])) or "-"
        letters = a.get("dead_letters", {})
        for reason, n in letters.get("by_reason", {}).items():
            dead[reason] = dead.get(reason, 0) + n
        click.echo(
            f"{name:<12}{'up':<8}{links:<32}{str(len(a['live'])) + '/' + str(len(a['nodes'])):<7}{a['actors']:>7}"
            f"{shares.get(name, 0):>8.1%}{total['messages']:>10,}{_ms(total['handler_time']):>12}"
            f"{letters.get('total', 0):>8,}"
        )
    handled = handler.to_dict()
    click.echo(
        f"\nherd-wide: {messages:,} messages; handler time mean {_ms(handled)}, max {_max_ms(handled)}; "
        f"mailbox wait mean {_ms(wait.to_dict())}"
    )
    if dead:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(dead.items(), key=lambda item: -item[1]))
        click.echo(f"dead letters: {sum(dead.values()):,} ({reasons}); see `herdrt status --json` for their targets")
    if down:
        sys.exit(1)


def _message(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc}); quote it for the shell, e.g. '{{\"n\": 1}}' or '\"text\"'", param_hint="MESSAGE"
        ) from None


def _node_of(config, node: str) -> str:
    if node not in config.nodes:
        raise click.BadParameter(
            f"{node!r} is not a node of {config.source} (nodes: {', '.join(config.nodes)})", param_hint="NODE"
        )
    return node


async def _client_call(config, node, fn, timeout):
    from .herd.client import HerdClient

    client = await HerdClient(config, node).connect(timeout)
    try:
        return await fn(client)
    finally:
        await client.close()


def _call_node(config, config_path, node, fn, timeout, *, what: str, where: str | None = None, keyed=False):
    """``fn(client)`` on a client of ``node``; its result. A failure exits 1 with a message that
    says what to do: ``what`` names the request (``"ask echo@Bona"``), ``where`` the node whose
    actors an unknown-actor error is about (default: ``node``), ``keyed`` whether it was a keyed one."""
    from .errors import ActorNotFound, AskTimeout, HerdError, NodeUnavailable, RemoteError

    try:
        return asyncio.run(_client_call(config, node, fn, timeout))
    except RemoteError as exc:
        if exc.type_name == "BadRequest":
            raise click.ClickException(f"{what}: refused: {exc.message}") from None
        raise click.ClickException(
            f"{what}: the handler raised {exc.type_name}: {exc.message} (the node running it logs the traceback)"
        ) from None
    except ActorNotFound as exc:
        where = where or node
        listing = "the kinds of keyed actors running on" if keyed else "the actors on"
        raise click.ClickException(
            f"{what}: {exc}; `herdrt actors {where}{_with_config(config_path)}` lists {listing} {where}"
        ) from None
    except NodeUnavailable as exc:
        raise click.ClickException(
            f"{what}: {exc}; `herdrt status{_with_config(config_path)}` shows which nodes are up"
        ) from None
    except AskTimeout as exc:
        raise click.ClickException(f"{what}: {exc}") from None
    except ConnectionRefusedError:
        host, port = config.node(node).address
        raise click.ClickException(
            f"{what}: cannot reach node {node} at {host}:{port} (connection refused); is the herd running? "
            f"`herdrt status{_with_config(config_path)}` shows which nodes are up"
        ) from None
    except TimeoutError as exc:
        raise click.ClickException(f"{what}: {str(exc) or f'no answer from node {node} within {timeout:g}s'}") from None
    except (HerdError, OSError) as exc:
        raise click.ClickException(f"{what}: {type(exc).__name__}: {exc}") from None


def _send(config_path, node, target, message, kind, timeout, asking):
    from .errors import AskTimeout
    from .herd import ADMIN_ACTOR
    from .herd.client import parse_target

    _quiet_client_logs()
    config = _config(config_path)
    _node_of(config, node)
    payload = _message(message)
    if kind is not None:
        shown, where = f"{kind}:{target}", node
    else:
        try:
            where, name = parse_target(target, node)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="TARGET") from None
        shown = f"{name}@{where}"
    verb = "ask" if asking else "tell"

    async def call(client):
        if asking:
            return await client.ask(target, payload, timeout=timeout, kind=kind)
        request = {"op": "tell", "target": target, "message": payload, "kind": kind}
        try:  # the node confirms once the message is in the target's mailbox (or fails)
            return await client.ask(ADMIN_ACTOR, request, timeout=timeout)
        except AskTimeout:
            raise AskTimeout(f"no confirmation of the tell from {node} within {timeout:g}s") from None

    reply = _call_node(
        config, config_path, node, call, timeout, what=f"{verb} {shown}", where=where, keyed=kind is not None
    )
    if asking:
        click.echo(json.dumps(reply, default=lambda b: b.hex() if isinstance(b, bytes) else str(b)))


_target_args = [
    click.argument("node"),
    click.argument("target"),
    click.argument("message", required=False),
    click.option("--kind", help="TARGET is the key of a keyed actor of this kind (placed by the ring)."),
    _timeout_option(5.0, "Seconds to wait for the node's answer."),
    _config_option,
]


def _with_target_args(fn):
    for decorator in reversed(_target_args):
        fn = decorator(fn)
    return fn


@main.command(short_help="Send a message to an actor; exit 1 if it cannot be delivered.")
@_with_target_args
def tell(node, target, message, kind, timeout, config_path):
    """Send MESSAGE (JSON; default null) to TARGET (NAME or NAME@NODE) through NODE; no reply.

    NODE confirms once the message is in the mailbox of a live actor (for an actor on another node,
    once that node confirms). An unknown actor, a full mailbox or an unreachable node is an error
    (exit 1); `herdrt actors NODE` lists the actors of a node. What the actor then does with the
    message is not awaited (use `herdrt ask` for a reply)."""
    _send(config_path, node, target, message, kind, timeout, asking=False)


@main.command(short_help="Ask an actor and print its reply as JSON.")
@_with_target_args
def ask(node, target, message, kind, timeout, config_path):
    """Ask TARGET (NAME or NAME@NODE) through NODE with MESSAGE (JSON; default null); print the reply
    as JSON. `herdrt ask Bona '$node' '"status"'` shows one node's view of the herd. A refused
    message, an unknown actor or a handler that raised is an error (exit 1)."""
    _send(config_path, node, target, message, kind, timeout, asking=True)


# --- herdrt actors / owner -------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _mailbox(depth: int, size: int | None) -> str:
    return f"{depth:,}/{'unbounded' if size is None else f'{size:,}'}"


@main.command(short_help="List the actors of one node.")
@click.argument("node")
@_config_option
@_timeout_option(5.0, "Seconds to wait for the node's answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the node's answer as JSON.")
def actors(node, config_path, timeout, as_json):
    """List the actors running on NODE: each named actor with the messages it handled, its
    failures and restarts and its mailbox (queued/capacity); keyed actors one line per kind, with
    how many of that kind run there (their counts include those that stopped or moved away)."""
    from .herd import ADMIN_ACTOR

    _quiet_client_logs()
    config = _config(config_path)
    _node_of(config, node)

    async def call(client):
        return await client.ask(ADMIN_ACTOR, "actors", timeout=timeout)

    report = _call_node(config, config_path, node, call, timeout, what=f"actors of {node}")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    named, keyed = report["actors"], report["keyed"]
    running = sum(row["running"] for row in keyed)
    click.echo(
        f"{node}: {_count(len(named), 'named actor')}, {_count(running, 'keyed actor')} "
        f"({_count(len(keyed), 'kind')})\n"
    )
    width = max([len("actor"), *(len(row["name"]) for row in named)]) + 2
    click.echo(f"{'actor':<{width}}{'messages':>12}{'failures':>10}{'restarts':>10}  mailbox")
    for row in named:
        click.echo(
            f"{row['name']:<{width}}{row['messages']:>12,}{row['failures']:>10,}{row['restarts']:>10,}  "
            f"{_mailbox(row['mailbox_depth'], row['mailbox_size'])}"
        )
    if keyed:
        width = max(len("kind"), *(len(row["kind"]) for row in keyed)) + 2
        click.echo(f"\n{'kind':<{width}}{'running':>10}{'messages':>12}{'failures':>10}{'queued':>10}")
        for row in keyed:
            click.echo(
                f"{row['kind']:<{width}}{row['running']:>10,}{row['messages']:>12,}{row['failures']:>10,}"
                f"{row['mailbox_depth']:>10,}"
            )


@main.command(short_help="Show which node owns a keyed actor's key.")
@click.argument("kind")
@click.argument("key")
@_config_option
@_timeout_option(2.0, "Seconds to wait for each node.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def owner(kind, key, config_path, timeout, as_json):
    """Show which node owns keyed actor KIND KEY now: its place on the MD5 ring of the live nodes
    (PROTOCOL.md, Placement), as the first node to answer sees it. Exits 1 if no node answers."""
    _quiet_client_logs()
    config = _config(config_path)
    request = {"op": "owner", "kind": kind, "key": key}
    answers = asyncio.run(_ask_admins(config, list(config.nodes), request, timeout, first=True))
    replies = [a for a in answers.values() if isinstance(a, dict)]
    if not replies:
        raise _nobody_answered(config, config_path, answers, timeout)
    answer = replies[0]
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    live = answer["live"]
    click.echo(
        f"{answer['ring_key']} is owned by {answer['owner']} (on the ring of the {len(live)} live nodes "
        f"{', '.join(live)}, as {answer['node']} sees it)"
    )
    if not answer["registered"]:
        click.echo(
            f"note: no actor kind {kind!r} is registered on {answer['node']}: messages to it fail there",
            err=True,
        )


# --- herdrt top ------------------------------------------------------------------------------------


@main.command(short_help="Watch the herd live: nodes, links and rates.")
@_config_option
@click.option(
    "--once",
    is_flag=True,
    help="Print one frame (two rounds INTERVAL apart, so rates are real) and exit: 1 if a node is down.",
)
@click.option(
    "--interval", default=1.0, show_default=True, type=_SECONDS, metavar="SECONDS", help="Seconds between refreshes."
)
@_timeout_option(1.0, "Seconds to wait for each node's answer.")
def top(config_path, once, interval, timeout):
    """Watch the herd live: nodes, links and rates.

    Shows every node (up or down), the links of the neighbor graph with their RTT, message rates,
    the busiest actors, dead letters and bridge services. Keeps one client link to each node and
    asks its admin actor for its status every INTERVAL seconds; Ctrl-C quits. With --once, prints
    a single frame instead and exits 1 if any node is down, 0 otherwise (as `herdrt status` does).
    """
    from .observe.top import run_top

    _quiet_client_logs()  # (a node that refuses the link is shown as down, with the reason)
    config = _config(config_path)
    try:
        view = asyncio.run(run_top(config, interval=interval, once=once, timeout=timeout))
    except KeyboardInterrupt:
        if once:
            sys.exit(130)  # interrupted before the frame: no verdict on the herd
        return
    if view["summary"]["nodes_up"] < view["summary"]["nodes"]:
        sys.exit(1)


# --- herdrt keys -----------------------------------------------------------------------------------


@main.command(short_help="Make a CURVE key pair for the ZMQ bridge.")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the secret key to this new file (mode 0600) instead of printing it.",
)
def keys(secret_file):
    """Make a CURVE key pair (z85) for the ZMQ bridge.

    For the bridge itself: put the secret key in a file named by `curve_secret_key_file` under
    [herd.bridge]. For a service: give its public key to the herd (`allowed_client_keys`) and keep
    its secret key with the service.
    """
    import zmq

    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    click.echo("# herdrt CURVE key pair (z85)")
    click.echo(f'public_key = "{public}"')
    if secret_file is None:
        click.echo(f'secret_key = "{secret}"   # keep private')
        return
    try:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise click.ClickException(f"cannot create {secret_file}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    click.echo(f"# secret key written to {secret_file} (mode 0600)")


# --- herdrt certs ----------------------------------------------------------------------------------


@main.command(short_help="Make TLS certificates for the herd's links.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("nodes", nargs=-1, required=True)
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500), help="How long they are valid.")
def certs(directory, nodes, days):
    """Make a CA and a certificate per node (and one for clients) for mutual TLS on herd links.

    Writes DIRECTORY/ca.pem, ca.key and, for each of NODES and for "client", NAME.pem and NAME.key
    (keys mode 0600). Then, in the herd file:

    \b
    [herd.tls]
    ca_file = "DIRECTORY/ca.pem"
    cert_file = "DIRECTORY/{node}.pem"
    key_file = "DIRECTORY/{node}.key"

    Copy to each host only its own NAME.pem and NAME.key (and ca.pem); keep ca.key offline.
    """
    from .herd.tls import make_certificates

    taken = [name for name in ("ca", *nodes, "client") if (directory / f"{name}.key").exists()]
    if taken:
        raise click.ClickException(f"{directory} already holds keys for {', '.join(taken)}: choose a new directory")
    paths = make_certificates(directory, nodes, days=days)
    for name, (cert, key) in paths.items():
        click.echo(f"{name:<12} {cert}  {key}")
    click.echo(
        f'# [herd.tls]\n# ca_file = "{paths["ca"][0]}"\n# cert_file = "{directory}/{{node}}.pem"\n'
        f'# key_file = "{directory}/{{node}}.key"'
    )


if __name__ == "__main__":  # pragma: no cover
    main()
