"""Shell completion, made from the parser by shtab: command and option names from the parser
itself, paths where a path goes (the pool, mount points, image files, streams), and LU, snapshot
and node names read from the pool the line names (``--pool``, else ``BLOCKSTORE_POOL``) by a
hidden ``--names`` of ``lu list`` and ``cluster status``."""
from __future__ import annotations

import argparse
from typing import Any

from .args import GLOBAL_OPTIONS, commands

#: positionals and options that take a path: a file, or a directory
FILES = {"file", "src", "save", "png", "chart_from"}
DIRS = {"pool", "mountpoint", "mirror_dir", "dir"}
#: in `lu` commands, the arguments that name an existing LU or snapshot (not a new name)
LU_ARGS = {"name", "source", "older", "newer"}
NEW_NAME = {"blockstore lu create", "blockstore lu import"}

_BASH = r'''
# the --pool the command line names (else BLOCKSTORE_POOL), as arguments for blockstore
_blockstore_pool_args() {
  local i w
  for ((i = 1; i < ${#COMP_WORDS[@]}; i++)); do
    w=${COMP_WORDS[i]}
    case "$w" in
      --pool) w=${COMP_WORDS[i+1]}; printf -- '--pool\n%s\n' "${w/#\~/$HOME}"; return;;
      --pool=*) w=${w#--pool=}; printf -- '--pool\n%s\n' "${w/#\~/$HOME}"; return;;
    esac
  done
}
_blockstore_names() {  # $1: the word so far; $2...: the command that lists the names
  local cur=$1; shift
  local -a pool
  mapfile -t pool < <(_blockstore_pool_args)
  compgen -W "$(blockstore "${pool[@]}" "$@" --names 2>/dev/null)" -- "$cur"
}
_blockstore_lu_names() { _blockstore_names "$1" lu list --kind all; }
_blockstore_node_names() { _blockstore_names "$1" cluster status; }
'''

_ZSH = r'''
_blockstore_names() {
  local -a pool names
  local i=${words[(I)--pool]}
  (( i )) && pool=(--pool ${~words[i+1]})
  names=(${(f)"$(blockstore $pool "$@" --names 2>/dev/null)"})
  compadd -a names
}
_blockstore_lu_names() { _blockstore_names lu list --kind all; }
_blockstore_node_names() { _blockstore_names cluster status; }
'''


def annotate(parser: argparse.ArgumentParser) -> None:
    """Say, on each argument, what completes it (shtab reads ``action.complete``)."""
    import shtab
    lu_names = {"bash": "_blockstore_lu_names", "zsh": "_blockstore_lu_names"}
    node_names = {"bash": "_blockstore_node_names", "zsh": "_blockstore_node_names"}
    globals_ = {tuple(flags): kw["help"] for flags, kw in GLOBAL_OPTIONS}
    for leaf in [parser, *commands(parser)]:
        for a in leaf._actions:
            if a.help == argparse.SUPPRESS and tuple(a.option_strings) in globals_:
                # hidden from a command's help, yet given there (`lu rm x --pool P`): shtab must know it
                a.help = globals_[tuple(a.option_strings)]
            if a.help == argparse.SUPPRESS:
                continue
            if a.dest in DIRS:
                a.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
            elif a.dest in FILES:
                a.complete = shtab.FILE  # type: ignore[attr-defined]
            elif a.dest == "node" or (leaf.prog.startswith("blockstore node ") and a.dest == "name"):
                a.complete = node_names  # type: ignore[attr-defined]
            elif leaf.prog.startswith("blockstore lu ") and a.dest in LU_ARGS and leaf.prog not in NEW_NAME:
                a.complete = lu_names  # type: ignore[attr-defined]


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell``."""
    import shtab
    annotate(parser)
    preamble: Any = {"bash": _BASH, "zsh": _ZSH}  # shtab takes one per shell
    return str(shtab.complete(parser, shell=shell, preamble=preamble))
