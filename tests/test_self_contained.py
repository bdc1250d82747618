"""The repository cites no file outside itself: a reader can follow every reference it makes."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Ignored or generated folders (see .gitignore): never part of what a reader gets.
SKIP_DIRS = {
    ".git",
    ".venv",
    "runs",
    "data",
    "outputs",
    "build",
    "tmp",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
    ".gpu-transfer",
    ".whl",
    ".gl",
}
# Notes kept beside the repository, not in it. Built from pieces so that this file does not match itself.
OUTSIDE_FILES = (
    "DESIGN" + ".md",
    "DESIGN" + " §",
    "STYLE" + ".md",
    ".." + "/shared",
    "README" + "_seed",
    "seed" + "_code.md",
    "research/" + "anchors.md",
)


def repository_text_files(root: Path) -> list[Path]:
    """Returns every UTF-8 text file under `root` outside the ignored folders, sorted."""
    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if not path.is_file() or any(part in SKIP_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found.append(path)
    return found


def test_repository_cites_no_file_outside_itself():
    """No code comment, doc, message or config names a note that lives outside the repository."""
    files = repository_text_files(ROOT)
    names = {path.relative_to(ROOT).as_posix() for path in files}
    assert {"README.md", "docs/SCALING.md", "engine/core/scans/letterbox.py", "Makefile"} <= names
    hits = [
        f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if any(needle in line for needle in OUTSIDE_FILES)
    ]
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)
