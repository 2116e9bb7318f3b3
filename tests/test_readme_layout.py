"""The README's layout ("How the parts fit") names every module of the package and the callbacks."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## How the parts fit")
    return text[start : text.index("```", text.index("```", start) + 3)]


def test_layout_lists_every_module():
    block = layout_block()
    modules = [*(ROOT / "src" / "soft_tokens").rglob("*.py"), *(ROOT / "callbacks").glob("*.py")]
    missing = [str(p.relative_to(ROOT)) for p in modules if p.name != "__init__.py" and p.name not in block]
    assert not missing, f"README 'How the parts fit' does not list: {missing}"
