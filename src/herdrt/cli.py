"""The ``herdrt`` command line."""

from __future__ import annotations

import hashlib
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


@main.command()
@click.argument("words_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--servers", default=5, show_default=True, type=click.IntRange(1, 1000), help="How many servers.")
@click.option("--vnodes", default=160, show_default=True, type=click.IntRange(4, 4096), help="Ring points per server (a multiple of 4).")
def ring(words_file: Path | None, servers: int, vnodes: int):
    """Spread words over servers three ways and show which stays even.

    Places every word of WORDS_FILE (whitespace-separated; default: a bundled English word list)
    on N servers by first letter, by MD5 modulo N, and by the MD5 hash ring, printing each
    server's count and share. Then adds one server and prints the fraction of words that move
    under MD5 modulo N, the ring and jump consistent hash.
    """
    if vnodes % 4:
        raise click.BadParameter(f"{vnodes} is not a multiple of 4 (each MD5 digest gives 4 points)", param_hint="--vnodes")
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
    moved_ring = sum(old != hring.lookup(w) for w, old in zip(words, schemes[f"ring ({vnodes} vnodes)"]))
    moved_jump = sum(jump_hash(k, servers) != jump_hash(k, grown) for k in map(_jump_key, words))
    click.echo(f"\nwords that move when {new_name} joins (ideal: 1/{grown} = {1 / grown:.1%}):")
    for label, moved in (("md5 % n", moved_mod), ("ring", moved_ring), ("jump hash", moved_jump)):
        click.echo(f"  {label:<10}{moved:>10,} {moved / total:>8.1%}")


if __name__ == "__main__":  # pragma: no cover
    main()
