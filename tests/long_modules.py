"""Lists the project's Python modules over LIMIT lines: `python -m tests.long_modules`.

Exits 1 when a module is over the limit and not in ALLOWED, else 0. A long module usually holds
more than one concern; split it into modules named for what each holds. Generated migrations
are not counted. `--limit N` checks another bound, `--all` lists allowed ones too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

LIMIT = 400
REPO = Path(__file__).resolve().parent.parent
# Folders that hold no project source: environments, data, caches, generated migrations.
SKIPPED_DIRS = frozenset({".git", ".venv", ".var", "__pycache__", "migrations", "node_modules",
                          ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", "dist"})

# Modules that may stay over the limit, each with the reason. Paths relative to the repository.
# Modules that must stay whole, each with the reason: none today.
ALLOWED: dict[str, str] = {}


def python_modules(root: Path) -> Iterator[Path]:
    """Every .py file below `root`, outside SKIPPED_DIRS, in a stable order."""
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not any(part in SKIPPED_DIRS for part in parts[:-1]):
            yield path


def line_count(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def long_modules(root: Path, *, limit: int = LIMIT) -> list[tuple[str, int]]:
    """(path relative to root, lines) of every module over `limit` lines."""
    found = []
    for path in python_modules(root):
        lines = line_count(path)
        if lines > limit:
            found.append((path.relative_to(root).as_posix(), lines))
    return found


def not_allowed(found: list[tuple[str, int]],
                allowed: dict[str, str] = ALLOWED) -> list[tuple[str, int]]:
    return [(path, lines) for path, lines in found if path not in allowed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.long_modules", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=LIMIT, help=f"lines (default {LIMIT})")
    parser.add_argument("--all", action="store_true", help="list allowed modules too")
    args = parser.parse_args(argv)
    found = long_modules(REPO, limit=args.limit)
    failing = not_allowed(found)
    for path, lines in found:
        if path in ALLOWED:
            if args.all:
                print(f"{lines:6d}  {path}  (allowed: {ALLOWED[path]})")
        else:
            print(f"{lines:6d}  {path}")
    # An entry whose module shrank or went away is no longer needed: say so, without failing.
    long_paths = {path for path, _ in found}
    for path in sorted(set(ALLOWED) - long_paths):
        print(f"note: {path} is allowed but not over {args.limit} lines: drop it from ALLOWED",
              file=sys.stderr)
    if failing:
        print(f"{len(failing)} module(s) over {args.limit} lines: split each into modules named "
              "for what they hold, or add it to ALLOWED in tests/long_modules.py with the reason",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
