"""docs/layout.md names every module, callback and script; the README's commands compose; the README is short."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]


def layout_lines() -> dict[str, str]:
    """{path: its line} of docs/layout.md's listing: a file's path is its folders' lines above it, then its name."""
    text = (ROOT / "docs" / "layout.md").read_text()
    block = text[text.index("```\n") + 4 : text.rindex("```")]
    out, folders = {}, []
    for line in block.splitlines():
        indent = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0] if line.strip() else ""
        if not name or name.startswith("`"):
            continue
        folders = folders[:indent]
        out["".join(folders) + name] = line
        if name.endswith("/"):
            folders.append(name)
    return out


def test_layout_doc_lists_every_module_callback_and_script():
    listed = layout_lines()
    files = [*(ROOT / "src" / "soft_tokens").rglob("*.py"), *(ROOT / "callbacks").glob("*.py")]
    files += [p for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh")]
    paths = [
        p.relative_to(ROOT).as_posix()
        for p in files
        if p.name != "__init__.py" or p.parent.name == "soft_tokens"
    ]
    missing = [p for p in paths if p not in listed and p.removeprefix("src/") not in listed]
    assert not missing, f"docs/layout.md does not list: {missing}"
    # and names nothing that is gone
    gone = [
        p
        for p in listed
        if p.endswith((".py", ".sh")) and not (ROOT / p).exists() and not (ROOT / "src" / p).exists()
    ]
    assert not gone, f"docs/layout.md lists files that do not exist: {gone}"


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "docs/layout.md" in text


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
