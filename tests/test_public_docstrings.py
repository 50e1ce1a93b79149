"""Every public function, class, method and property of the modules added or reworked for the
CPU fast path, the CUDA backward plan and the budgeted GPU session has a docstring (the house
rule: what it takes and returns, shapes and layouts). Nested helpers and ``_private`` names are
exempt; autograd Functions' forward/backward are described by their class."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["flashseq/nn/fast_path.py", "flashseq/kernels/fused_rnn/plan.py",
           "flashseq/kernels/fused_rnn/plan_bwd.py", "flashseq/kernels/fused_rnn/cpu_linear.py",
           "bench/gpu_smoke.py", "bench/gpu_sanitize.py"]
# an autograd.Function's forward/backward: torch's protocol, documented on the class
PROTOCOL = {"forward", "backward", "setup_context", "jvp", "vmap"}


def undocumented(path: Path) -> list[str]:
    """'name:line' of each public definition of ``path`` (module level, or a method of a
    module-level class) without a docstring."""
    tree = ast.parse(path.read_text())
    missing = []
    for node in tree.body:
        defs = [(node, None)]
        if isinstance(node, ast.ClassDef):
            defs += [(item, node) for item in node.body
                     if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for item, owner in defs:
            if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if item.name.startswith("_") or (owner is not None and item.name in PROTOCOL):
                continue
            if ast.get_docstring(item) is None:
                missing.append(f"{item.name}:{item.lineno}")
    return missing


@pytest.mark.parametrize("module", MODULES)
def test_public_definitions_have_docstrings(module):
    assert undocumented(ROOT / module) == []


def test_the_check_finds_a_missing_docstring(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("class A:\n    '''doc'''\n    @property\n    def size(self):\n        return 1\n"
                      "\n\ndef f():\n    '''doc'''\n\n\ndef _g():\n    pass\n")
    assert undocumented(sample) == ["size:4"]
