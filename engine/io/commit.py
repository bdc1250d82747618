"""Swap-in commit of staged table folders with a journal, and the recovery of a commit a kill interrupted.

A commit is: write the journal (the decision), move every old folder aside, write the journal's second
phase, move every new folder into place, delete the old folders, delete the journal. Each step only
moves whole folders or finishes moving what is left of one, so replaying the journal from its phase is
safe after a kill at any point: before the journal exists the old tables stand (the staging is stale);
from then on `recover` rolls the commit forward to the new tables.

On a local disk each move is one rename. S3 and GCS cannot rename folders: there a move is a copy +
delete per file, so between a kill and the next `recover` a reader can see one table partly moved
(old and new files never mix in one folder, because the old files are moved aside first).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pyarrow.fs as pafs

log = logging.getLogger(__name__)

JOURNALS = "_commits"  # <run_dir>/_commits/<staging name>.json: one per commit in progress


@dataclass(frozen=True)
class Move:
    """One folder a commit replaces: `final` (where readers look), `staged` (the new one), `aside` (the old one)."""

    final: str
    staged: str
    aside: str


def join(*parts: str) -> str:
    """Returns the parts joined by '/' (paths and URIs alike), empty parts skipped."""
    return "/".join(p.rstrip("/") for p in parts if p)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Returns True when `path` is a file or a folder."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def move_tree(fs: pafs.FileSystem, src: str, dst: str, merge: bool = False) -> None:
    """Moves folder `src` to `dst`: one rename on a local disk, file by file elsewhere or when merging.

    S3 and GCS cannot move folders (pyarrow's own tests: `allow_move_dir=False`); there a file move
    is a copy + delete. `merge=True` moves the files into an existing `dst`, replacing files of the same name.
    """
    if isinstance(fs, pafs.LocalFileSystem) and not merge:
        fs.move(src, dst)
        return
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            target = dst + info.path[len(src) :]
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            fs.move(info.path, target)
    if exists(fs, src):
        fs.delete_dir(src)


def _move_rest(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Moves what is left of `src` to `dst` (all of it, or the rest of an interrupted move)."""
    if not exists(fs, src):
        return
    fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    move_tree(fs, src, dst, merge=exists(fs, dst))


def _write_journal(fs: pafs.FileSystem, path: str, phase: str, moves: list[Move]) -> None:
    """Writes the journal under a temporary name, then renames it (a reader sees all of it or nothing)."""
    body = {
        "phase": phase,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "moves": [[m.final, m.staged, m.aside] for m in moves],
    }
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(f"{path}.tmp") as out:
        out.write(json.dumps(body).encode())
    fs.move(f"{path}.tmp", path)


def swap_steps(fs: pafs.FileSystem, root: str, name: str, moves: list[Move], phase: str = "aside") -> Iterator[str]:
    """Commits `moves`; yields a label after each filesystem change (a kill can fall between any two).

    `phase="swap"` resumes a commit whose old folders are all aside already (see `recover`).
    """
    journal = join(root, JOURNALS, f"{name}.json")
    if phase == "aside":
        _write_journal(fs, journal, "aside", moves)
        yield "journal"
        for move in moves:
            _move_rest(fs, move.final, move.aside)
            yield f"aside {move.final}"
    _write_journal(fs, journal, "swap", moves)
    yield "swap"
    for move in moves:
        _move_rest(fs, move.staged, move.final)
        yield f"new {move.final}"
    for move in moves:
        if exists(fs, move.aside):
            fs.delete_dir(move.aside)
    yield "old deleted"
    fs.delete_file(journal)
    yield "done"


def _is_live(body: dict) -> bool:
    """Returns True when the journal's writer is another process still running on this host."""
    pid = int(body.get("pid", -1))
    return body.get("host") == socket.gethostname() and pid != os.getpid() and psutil.pid_exists(pid)


def recover(fs: pafs.FileSystem, root: str) -> int:
    """Rolls forward every commit a kill interrupted under `root`; returns how many it finished."""
    base = join(root, JOURNALS)
    if not exists(fs, base):
        return 0
    done = 0
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if not info.path.endswith(".json"):
            continue
        with fs.open_input_stream(info.path) as stream:
            body = json.loads(stream.read())
        if _is_live(body):
            continue
        log.warning("finishing the commit a killed run left (%s)", info.path)
        moves = [Move(*paths) for paths in body["moves"]]
        for _ in swap_steps(fs, root, info.base_name[: -len(".json")], moves, body["phase"]):
            pass
        done += 1
    return done
