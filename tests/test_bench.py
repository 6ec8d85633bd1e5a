"""The benchmark scripts: every rlaif name they import exists (a refactor that moves one breaks them silently,
as bench/rl.py and bench/reward.py were once), and bench/gpu.py runs end to end at toy size on the CPU, so a GPU
run does not fail on a typo."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_rlaif_name_a_benchmark_imports_exists():
    missing = []
    for script in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlaif"):
                module = importlib.import_module(node.module)
                missing += [
                    f"{script.name}: {node.module}.{a.name}"
                    for a in node.names
                    if not hasattr(module, a.name)
                ]
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.vllm
def test_gpu_benchmark_runs_at_tiny_size(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu.py"),
            "--size",
            "tiny",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    pieces = result["models"]["tiny"]
    assert set(pieces) == {"generation", "dpo", "rloo", "reward"}
    for name, piece in pieces.items():
        assert "error" not in piece, (name, piece.get("error", "")[-2000:])
    assert set(result["ratios"]["tiny"]) == {
        "vllm_over_transformers",
        "dpo_over_trl",
        "rloo_over_trl",
        "reward_over_trl",
    }
    assert all(v and v > 0 for v in result["ratios"]["tiny"].values())
