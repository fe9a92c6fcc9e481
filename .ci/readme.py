"""Write README.md from nbs/index.ipynb, without quarto.

The index notebook is the project's front page: its title cell becomes the heading and
summary, its markdown cells the text, and its visible code cells code blocks. Cells with
nbdev directives (`#| hide`, `#| export`, ...) stay out of the README, like on the docs site.

Usage: python .ci/readme.py [--check]   (--check: exit 1 if README.md is out of date)
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT/"nbs"/"index.ipynb", ROOT/"README.md"
HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`; edit the notebook, not this file. -->\n\n"


def cell_text(cell: dict) -> str:
    """The source of a notebook cell as one string."""
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def is_hidden(code: str) -> bool:
    """Whether a code cell carries an nbdev directive that keeps it out of the docs."""
    return any(re.match(r"^#\|\s*(hide|export|exporti|default_exp|exports)\b", line) for line in code.splitlines())


def rebase_images(markdown: str) -> str:
    """Image links relative to nbs/ (where the notebook and the docs site see them) made relative to the repository root."""
    return re.sub(r"(!\[[^\]]*\]\()(?![a-z]+:|/)", r"\1nbs/", markdown)


def render(nb: dict) -> str:
    """The README text for the index notebook `nb`."""
    parts = []
    for cell in nb["cells"]:
        text = cell_text(cell).strip()
        if not text: continue
        if cell["cell_type"] == "markdown": parts.append(rebase_images(text))
        elif cell["cell_type"] == "code" and not is_hidden(text): parts.append(f"```python\n{text}\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    text = render(json.loads(SOURCE.read_text()))
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print("README.md is out of date with nbs/index.ipynb: run `make readme` and commit it", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
