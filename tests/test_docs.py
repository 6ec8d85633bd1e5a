"""The docs: the generated reference pages match the code (a new key or option without a regenerated page is
red), every guide is in the site's navigation, and the site builds in strict mode (broken links are errors)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gen():
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_generated_reference_pages_are_current():
    for path, text in _gen().pages().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run `python docs/gen.py`"


def test_the_config_reference_has_every_key_with_its_docstring():
    import dataclasses
    import typing

    from rlaif.config import RunConfig

    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    gen = _gen()
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            docs = gen.field_docs(hints[f.name])
            for g in dataclasses.fields(hints[f.name]):
                assert f"`{f.name}.{g.name}`" in page
                assert g.name in docs, f"{f.name}.{g.name} has no docstring"


def test_every_guide_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, page


def test_the_site_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed (pip install -e '.[dev]')")
        pytest.skip("mkdocs is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    got = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
