"""The module length check (tests/long_modules.py): its logic on a made-up tree, then on the
repository itself, so a module that grows past the limit fails the fast tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import long_modules


def write(root: Path, relative: str, lines: int) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x = 1\n" * lines)


def test_counts_only_modules_over_the_limit_outside_skipped_folders(tmp_path: Path) -> None:
    write(tmp_path, "pkg/at_limit.py", 400)
    write(tmp_path, "pkg/over.py", 401)
    write(tmp_path, "pkg/migrations/0001_initial.py", 900)
    write(tmp_path, ".venv/lib/site.py", 900)
    write(tmp_path, "pkg/notes.txt", 900)
    write(tmp_path, "top.py", 450)
    assert long_modules.long_modules(tmp_path) == [("pkg/over.py", 401), ("top.py", 450)]
    assert long_modules.long_modules(tmp_path, limit=449) == [("top.py", 450)]


def test_allowed_modules_do_not_fail() -> None:
    found = [("a/long.py", 500), ("b/kept.py", 700)]
    assert long_modules.not_allowed(found, {"b/kept.py": "why"}) == [("a/long.py", 500)]
    assert long_modules.not_allowed(found, {"a/long.py": "x", "b/kept.py": "y"}) == []


def test_the_repository_has_no_module_over_the_limit_but_the_allowed_ones() -> None:
    found = long_modules.long_modules(long_modules.REPO)
    assert long_modules.not_allowed(found) == [], (
        "split these modules (or allow one in tests/long_modules.py, saying why)")


def test_every_allowed_entry_says_why() -> None:
    for path, reason in long_modules.ALLOWED.items():
        assert reason.strip(), path
        assert not Path(path).is_absolute()


def test_main_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "pkg/over.py", 401)
    monkeypatch.setattr(long_modules, "REPO", tmp_path)
    assert long_modules.main([]) == 1
    assert "pkg/over.py" in capsys.readouterr().out
    assert long_modules.main(["--limit", "401"]) == 0
