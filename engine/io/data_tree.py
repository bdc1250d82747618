"""A read-only, listing-based view of a data root: the local disk or any pyarrow filesystem.

`open_data_tree(root)` takes a local path, a storage URI (`file://`, `s3://`, `gs://`, … through
`engine.io.fs.resolve_fs`) or a path inside a given pyarrow filesystem (e.g. a `SubTreeFileSystem`).
Local roots, `file://` URIs and sub-trees of the local disk become a `LocalTree`: symlinks are resolved and
an entry that leaves the root is marked `is_inside=False`, never opened or listed. Other filesystems become
an `ArrowTree`; object stores have no symlinks, and callers open only names they listed, so no path
(`..`, absolute, `a/b`) from a label file ever reaches the filesystem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from engine.core.parsing import parse_image_size
from engine.io.fs import resolve_fs

HEADER_PROBE_BYTES = 65536  # a JPEG SOF marker sits in the first few KB unless EXIF/ICC data precede it


@dataclass(frozen=True)
class TreeEntry:
    """One directory entry; `path` is what to open or list (symlinks already resolved on local trees)."""

    name: str
    path: str
    is_dir: bool  # follows symlinks, like os.DirEntry.is_dir()
    is_file: bool
    is_inside: bool  # False: a symlink that resolves outside the root (never open or list it)


class LocalTree:
    """A data root on the local disk, read with Python file I/O (so audit hooks see every open/listing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.top = str(self.root)

    def is_root_dir(self) -> bool:
        """Returns whether the root exists and is a directory."""
        return self.root.is_dir()

    def entries(self, directory: str) -> dict[str, TreeEntry]:
        """Returns the directory's entries by name, in sorted order whatever the filesystem's order."""
        with os.scandir(directory) as iterator:
            listed = sorted(iterator, key=lambda entry: entry.name)
        return {entry.name: self._entry(entry) for entry in listed}

    def _entry(self, entry: os.DirEntry) -> TreeEntry:
        path, inside = entry.path, True
        if entry.is_symlink():
            resolved = Path(entry.path).resolve()
            path, inside = str(resolved), resolved.is_relative_to(self.root)
        return TreeEntry(entry.name, path, entry.is_dir(), entry.is_file(), inside)

    def read_bytes(self, path: str) -> bytes:
        """Returns a file's bytes."""
        return Path(path).read_bytes()

    def open(self, path: str) -> BinaryIO:
        """Returns a binary file handle (for header probes)."""
        return open(path, "rb")


class ArrowTree:
    """A data root on a pyarrow filesystem (S3, GCS, HDFS, fsspec, …): listings and reads through `fs`."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.top = root.rstrip("/") or root

    def is_root_dir(self) -> bool:
        """Returns whether the root exists and is a directory (a bucket or a prefix on object stores)."""
        return self.fs.get_file_info(self.top).type == pafs.FileType.Directory

    def entries(self, directory: str) -> dict[str, TreeEntry]:
        """Returns the directory's entries by name, in sorted order whatever the listing's order."""
        infos = self.fs.get_file_info(pafs.FileSelector(directory, recursive=False))
        return {
            info.base_name: TreeEntry(
                info.base_name, info.path, info.type == pafs.FileType.Directory, info.type == pafs.FileType.File, True
            )
            for info in sorted(infos, key=lambda info: info.base_name)
        }

    def read_bytes(self, path: str) -> bytes:
        """Returns a file's bytes."""
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def open(self, path: str) -> BinaryIO:
        """Returns a readable binary handle (for header probes)."""
        return self.fs.open_input_file(path)


DataTree = LocalTree | ArrowTree


def local_path(fs: pafs.FileSystem, path: str) -> str | None:
    """Returns the local-disk path behind `fs`/`path` (LocalFileSystem, or sub-trees of it), else None."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    if isinstance(fs, pafs.SubTreeFileSystem):
        return local_path(fs.base_fs, f"{fs.base_path.rstrip('/')}/{path.lstrip('/')}".rstrip("/") or "/")
    return None


def open_data_tree(data_root: str | Path, filesystem: pafs.FileSystem | None = None) -> DataTree:
    """Returns the tree of a local path or URI, or of `data_root` inside `filesystem` when given."""
    if filesystem is None:
        if "://" not in str(data_root):
            return LocalTree(data_root)
        filesystem, data_root = resolve_fs(str(data_root))
    root = str(data_root)
    on_disk = local_path(filesystem, root)
    return LocalTree(on_disk) if on_disk is not None else ArrowTree(filesystem, root)


def read_image_size(path: str | Path, tree: DataTree | None = None) -> tuple[int, int] | None:
    """Returns an image's (width, height) from its JPEG/PNG header, or None if unreadable.

    `path` is a local path, or a path of `tree` when given.
    """
    try:
        with tree.open(str(path)) if tree is not None else open(path, "rb") as handle:
            header = handle.read(HEADER_PROBE_BYTES)
            size = parse_image_size(header)
            if size is None and len(header) == HEADER_PROBE_BYTES:
                size = parse_image_size(header + handle.read())
    except OSError:
        return None
    return size
