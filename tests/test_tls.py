"""Mutual TLS on herd links (``[herd.tls]``): certificates made in the test (``herdrt certs``, the
``cryptography`` package), links in process on both loops, and a herd of real node processes."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from click.testing import CliRunner

from _herdtest import NodeProcesses, free_ports, wait_live
from herdrt.cli import main as cli_main
from herdrt.config import ConfigError, load_config, loads_config
from herdrt.herd import protocol as P
from herdrt.herd.client import HerdClient
from herdrt.herd.link import LinkRefused, LinkSettings
from herdrt.herd.links import LinkServer, connect
from herdrt.herd.tls import certificate_names, make_certificates

SECRET = "tls-test-secret-0123"


def herd_text(pki, names, ports, *, links=None, extra=""):
    text = (
        f'[herd]\nsecret = "{SECRET}"\nheartbeat_interval = 0.2\n'
        + (("links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in links) + "]\n") if links else "")
        + f'[herd.tls]\nca_file = "{pki}/ca.pem"\ncert_file = "{pki}/{{node}}.pem"\nkey_file = "{pki}/{{node}}.key"\n'
        + extra
    )
    return text + "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip(names, ports, strict=False))


class Inbox:
    def __init__(self):
        self.envs = []
        self.changed = asyncio.Event()

    def on_envelopes(self, link, envs):
        self.envs.extend(envs)
        self.changed.set()


def test_links_run_over_mutual_tls_and_refuse_strangers_and_impostors(run, tmp_path):
    pki = tmp_path / "pki"
    make_certificates(pki, ["A", "B", "C"])
    make_certificates(tmp_path / "other", ["A"])  # a CA the herd does not trust
    config = loads_config(herd_text(pki, ["A", "B", "C"], free_ports(3)))

    async def main():
        inbox = Inbox()
        b = LinkSettings.from_config(config, "B", heartbeat_interval=0.05)
        srv = await LinkServer(b, inbox.on_envelopes).start()
        link = await connect(*srv.address, LinkSettings.from_config(config, "A"), inbox.on_envelopes, peer="B")
        assert link.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert certificate_names(link.transport.get_extra_info("peercert")) == {"B"}
        link.send([P.TELL, "over tls"])
        while not inbox.envs:
            inbox.changed.clear()
            await asyncio.wait_for(inbox.changed.wait(), 5)
        assert inbox.envs == [[P.TELL, "over tls"]]

        # a certificate from another CA: no TLS handshake, so no link
        stranger = LinkSettings.from_config(config, "A")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(pki / "ca.pem")
        ctx.load_cert_chain(tmp_path / "other" / "A.pem", tmp_path / "other" / "A.key")
        with pytest.raises((ssl.SSLError, ConnectionError, LinkRefused)):
            await connect(*srv.address, LinkSettings(**{**stranger.__dict__, "ssl_client": ctx}), inbox.on_envelopes)
        # C's own, valid certificate, but it says it is A in its HELLO: refused
        impostor = LinkSettings.from_config(config, "C")
        with pytest.raises(LinkRefused) as info:
            await connect(*srv.address, LinkSettings(**{**impostor.__dict__, "name": "A"}), inbox.on_envelopes)
        assert info.value.code == "unknown_node" and "does not name it" in info.value.reason
        # no TLS at all: the node never speaks in clear
        reader, writer = await asyncio.open_connection(*srv.address)
        writer.write(b"\x00\x00\x00\x1b" + b"\x94" * 27)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert link.is_up and inbox.envs == [[P.TELL, "over tls"]]
        link.close()
        await srv.close()

    run(main)


def test_tls_config_errors_name_the_file(tmp_path):
    pki = tmp_path / "pki"
    make_certificates(pki, ["A"])
    port = free_ports(1)[0]
    with pytest.raises(ConfigError, match="herd.tls.ca_file: cannot read"):
        loads_config(herd_text(tmp_path / "nowhere", ["A"], [port]))
    with pytest.raises(ConfigError, match="herd.tls.colour: unknown key"):
        loads_config(herd_text(pki, ["A"], [port], extra="colour = 1\n"))
    config = loads_config(herd_text(pki, ["A", "Z"], free_ports(2)))
    with pytest.raises(ConfigError, match=r"key_file of Z: cannot read .*Z\.key"):
        LinkSettings.from_config(config, "Z")  # no certificate was made for Z
    (pki / "A.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        LinkSettings.from_config(config, "A")


def test_certs_command_makes_a_usable_pki(tmp_path):
    result = CliRunner().invoke(cli_main, ["certs", str(tmp_path / "pki"), "Bona", "Clark"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pki" / "Clark.key").stat().st_mode & 0o777 == 0o600
    again = CliRunner().invoke(cli_main, ["certs", str(tmp_path / "pki"), "Bona"])
    assert again.exit_code != 0 and "already holds keys" in again.output
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "pki" / "Bona.pem", tmp_path / "pki" / "Bona.key")


def test_a_herd_of_processes_over_mutual_tls(tmp_path):
    names = ["a", "b", "c"]
    pki = tmp_path / "pki"
    make_certificates(pki, names)
    path = tmp_path / "herd.toml"
    path.write_text(herd_text(pki, names, free_ports(3), links=[("a", "b"), ("b", "c")]))
    config = load_config(path)
    procs = NodeProcesses(tmp_path / "out")
    try:
        for name in names:
            procs.serve(name, path, "--app", "herd_app:setup")

        async def main():
            await wait_live(config, "a", names)
            async with HerdClient(config, "a") as client:  # the CLI's certificate: client.pem
                assert await client.ask("echo@c", "two hops over TLS") == ["c", "two hops over TLS"]
                assert await client.ask("news", {"say": "sealed"}) == "sent"
            # a node link seen from outside: TLS first, nothing in clear
            reader, writer = await asyncio.open_connection(*config.node("b").address)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.5)
            writer.close()

        asyncio.run(main())
    finally:
        procs.stop_all()
