"""What the code, configs and docs cite exists inside the repository: files, docs/method.md sections, counts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import PACKAGE_MODULE, PACKAGE_YAML

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg")
# Files docs/extending.md's "Adding a representer" recipe tells the reader to create (run by tests/test_extend.py).
RECIPE_FILES = {PACKAGE_MODULE, PACKAGE_YAML}


def tracked_text_files() -> list[Path]:
    """The repository's tracked text files (source, configs, docs, scripts, tests)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [n for n in out.stdout.splitlines() if n.endswith(TEXT_SUFFIXES) or n == "Makefile"]
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def path_references(text: str, top_dirs: list[str]) -> list[str]:
    """Paths into the repository's top-level folders (`docs/x.md`, `conf/a/b.yaml`) and bare `NAME.md` files."""
    folders = "|".join(map(re.escape, top_dirs))
    inside = rf"(?<![\w./-])((?:{folders})/[\w./-]*\w\.(?:md|py|yaml|sh|json|jsonl|txt|png|csv))\b"
    bare = r"(?<![\w./-])([A-Z][A-Z_]*\.md)\b"  # e.g. README.md
    return re.findall(inside, text) + re.findall(bare, text)


def test_cited_files_exist():
    files = tracked_text_files()
    top_dirs = sorted({p.relative_to(ROOT).parts[0] for p in files if len(p.relative_to(ROOT).parts) > 1})
    missing = []
    for path in files:
        if path == Path(__file__).resolve():  # its own docstrings show made-up examples
            continue
        for ref in path_references(path.read_text(errors="replace"), top_dirs):
            if ref in RECIPE_FILES:
                continue
            if not ((ROOT / ref).exists() or (path.parent / ref).exists()):
                missing.append(f"{path.relative_to(ROOT)} cites {ref}")
    assert not missing, "citations of files that are not in the repository:\n" + "\n".join(missing)


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|/work/shared|\.\./\.\./")
    hits = [
        str(p.relative_to(ROOT))
        for p in tracked_text_files()
        if outside.search(p.read_text(errors="replace"))
    ]
    hits = [h for h in hits if h != "tests/test_references.py"]
    assert not hits, f"files pointing outside the repository: {hits}"


def method_sections() -> set[str]:
    return {
        line[3:].strip()
        for line in (ROOT / "docs" / "method.md").read_text().splitlines()
        if line.startswith("## ")
    }


def test_method_citations_name_existing_sections():
    sections = method_sections()
    cited = re.compile(r'docs/method\.md, "([^"]+)"')
    bad, count = [], 0
    for path in tracked_text_files():
        for name in cited.findall(path.read_text(errors="replace")):
            count += 1
            if name not in sections:
                bad.append(f"{path.relative_to(ROOT)}: {name!r}")
    assert count > 0
    assert not bad, f"docs/method.md has no such section (its sections: {sorted(sections)}):\n" + "\n".join(
        bad
    )


def test_method_document_covers_the_method():
    sections = method_sections()
    needed = {
        "Token representations",
        "Log-probabilities",
        "Generation protocol",
        "Estimators",
        "The paper's settings",
        "The paper's headline numbers",
    }
    assert needed <= sections, needed - sections


def test_embedded_model_parameter_count_in_config_is_the_real_one():
    from transformers import AutoConfig, AutoModelForCausalLM

    text = (ROOT / "conf" / "model" / "embedded.yaml").read_text()
    stated = re.search(r"a ([\d,]+)-parameter", text)
    assert stated, "conf/model/embedded.yaml should state the embedded model's parameter count"
    config = AutoConfig.from_pretrained(ROOT / "assets" / "embedded")
    model = AutoModelForCausalLM.from_config(config)  # the architecture's count, no weights needed
    assert int(stated.group(1).replace(",", "")) == sum(p.numel() for p in model.parameters())
