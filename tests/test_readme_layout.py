"""The README: its layout ("How the parts fit") names every module and callback; its commands compose."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from helpers import compose_config

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


def readme_commands() -> list[list[str]]:
    """The `python train.py` / `python evaluate.py` command lines of the README's bash blocks, as words."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] in (["python", "train.py"], ["python", "evaluate.py"]):
                commands.append(words[1:])
    return commands


def test_readme_commands_compose():
    commands = readme_commands()
    assert len(commands) >= 7  # the paper's runs and their evaluation
    for entry, *overrides in commands:
        overrides = [o.replace("<run>", "outputs/train/runs/x") for o in overrides]
        cfg = compose_config(entry.removesuffix(".py"), overrides)
        assert cfg.model is not None, (entry, overrides)
