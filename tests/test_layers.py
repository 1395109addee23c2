"""The house's arrows point down: the data layer and the metrics import no torch, and the metrics
import neither the pipeline nor any model adapter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "tuner"
TORCH_FREE = ("tuner.metrics", "tuner.facegeom", "tuner.images", "tuner.hashing", "tuner.dataset", "tuner.memory",
              "tuner.texture", "tuner.degrade")
# what tuner/metrics may import from tuner besides itself
METRICS_MAY_IMPORT = {"tuner.images", "tuner.facegeom", "tuner.errors", "tuner.texture"}


def test_data_layer_and_metrics_import_without_torch():
    code = f"import sys\nfor m in {TORCH_FREE!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", f"importing {TORCH_FREE} pulled in torch: {r.stdout.strip()[:300]}"


def _tuner_imports(path: Path, module: str) -> set[str]:
    """Every tuner module ``path`` imports (module level or inside functions), as absolute names."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - n.level + 1] + ([base] if base else []))
            out |= {base} if n.module else {f"{base}.{a.name}" for a in n.names}
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
    return {m for m in out if m == "tuner" or m.startswith("tuner.")}


def test_metrics_import_neither_the_pipeline_nor_a_model_adapter():
    bad = {}
    for f in sorted((PKG / "metrics").rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        outside = {m for m in _tuner_imports(f, module) if not m.startswith("tuner.metrics")} - METRICS_MAY_IMPORT
        if outside:
            bad[module] = sorted(outside)
    assert not bad, f"metrics import from outside images/facegeom/errors: {bad}"


def test_the_import_check_sees_relative_and_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from ..faces import Face\ndef g():\n    from ..pipeline import Pipeline\n    import tuner.blend\n"
                 "from . import context\n")
    assert _tuner_imports(f, "tuner.metrics.m") == {"tuner.faces", "tuner.pipeline", "tuner.blend",
                                                    "tuner.metrics.context"}
