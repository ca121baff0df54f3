"""The README is a contract: every ``rtsflow …`` command it shows exists and parses with the options shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from rtsflow.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "cluster" / "README.md"]


def documented_commands(text: str) -> list[tuple[str, bool]]:
    """``(command line, from a code block)`` of every ``rtsflow …`` line in fenced blocks and inline code."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("rtsflow "):
                out.append((line, True))
    for span in re.findall(r"(?<!`)`(rtsflow [^`]+)`(?!`)", text):
        out.append((span, False))
    return out


def check_command(line: str, *, complete: bool) -> None:
    """Raise ``click.UsageError`` unless ``line`` names a real command and its options parse.

    Usage-style lines (``[--force]``, ``local|slurm``) are reduced to the options they name;
    ``complete`` lines (from code blocks) must also give every required option and argument.
    """
    tokens = shlex.split(line, comments=True)[1:]
    cmd: click.Command = main
    path = ["rtsflow"]
    while isinstance(cmd, click.Group) and tokens and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        sub = cmd.get_command(click.Context(cmd), name)
        if sub is None:
            raise click.UsageError(f"{' '.join(path)}: no such command {name!r} (documented: {line!r})")
        cmd, path = sub, [*path, name]
    usage = any(ch in line for ch in "[]|…")
    if usage:  # keep only the option names a usage line mentions
        names = re.findall(r"(--[a-z][a-z0-9-]*)", line)
        known = {o for p in cmd.params for o in p.opts}
        missing = [n for n in names if n not in known]
        if missing:
            raise click.UsageError(f"{' '.join(path)}: no option(s) {missing} (documented: {line!r})")
        return
    ctx = click.Context(cmd, info_name=" ".join(path))
    opts, extra, _ = cmd.make_parser(ctx).parse_args(args=list(tokens))
    if extra and not cmd.allow_extra_args:
        raise click.UsageError(f"{' '.join(path)}: unexpected argument(s) {extra} (documented: {line!r})")
    if complete and isinstance(cmd, click.Command) and not isinstance(cmd, click.Group):
        for p in cmd.params:
            if p.required and opts.get(p.name) is None:
                raise click.UsageError(f"{' '.join(path)}: {p.name!r} is required but not shown in {line!r}")


def _all():
    found = []
    for doc in DOCS:
        if doc.exists():
            found += [(doc.name, line, complete) for line, complete in documented_commands(doc.read_text())]
    return found


def test_the_docs_show_many_commands():
    found = _all()
    assert len({line.split()[1] for _, line, _ in found}) >= 12, found  # most subcommands are shown
    assert any(doc == "README.md" and "ingest-reference" in line for doc, line, _ in found)


@pytest.mark.parametrize(("doc", "line", "complete"), _all(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_command_exists_and_parses(doc, line, complete):
    check_command(line, complete=complete)


def test_the_check_fails_for_a_renamed_command_or_option():
    with pytest.raises(click.UsageError, match="no such command 'ingest-ref'"):
        check_command("rtsflow ingest-ref refdem.tif --cube cube.zarr", complete=True)
    with pytest.raises(click.NoSuchOption):
        check_command("rtsflow ingest-reference refdem.tif --cubes cube.zarr", complete=True)
    with pytest.raises(click.UsageError, match="'cube' is required"):
        check_command("rtsflow ingest-reference refdem.tif", complete=True)
    with pytest.raises(click.UsageError, match="unexpected argument"):
        check_command("rtsflow info a.zarr b.zarr", complete=True)
    with pytest.raises(click.UsageError, match="no option"):
        check_command("rtsflow run CONFIG.yaml [--forse]", complete=False)
    check_command("rtsflow cube footprints cube.zarr", complete=True)


def test_every_make_target_the_docs_name_exists():
    """`make X` in the docs (code blocks and inline code) is a target of the Makefile."""
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set()
    for doc in DOCS:
        if doc.exists():
            text = doc.read_text()
            for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
                named |= set(re.findall(r"^(?:\$ )?make ([a-z][a-z0-9-]*)", block, flags=re.M))
            named |= set(re.findall(r"`make ([a-z][a-z0-9-]*)[^`]*`", text))
    assert {"demo", "test"} <= named
    assert named <= targets, f"documented but not in the Makefile: {sorted(named - targets)}"
