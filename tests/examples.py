"""The plug-in files docs/extending.md writes out, as files a test can import: one shared copy per
test session, so every test that imports them registers each name once."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"my_denoiser.py", "contrast_reward.py", "two_prompt_task.py", "ddim_trailing.py", "shortcut_tail.py"}


def extending_blocks() -> dict[str, str]:
    """The python code blocks of docs/extending.md, by the file name in their first line."""
    text = (ROOT / "docs" / "extending.md").read_text()
    return dict(re.findall(r"```python\n# (\S+)\n(.*?)```", text, flags=re.DOTALL))


def write_examples(base: Path) -> dict[str, Path]:
    """The page's files written once per test session under `base` (the session's temporary
    root), so every test that imports them imports the same files and registers each name once."""
    directory = base / "extending"
    directory.mkdir(exist_ok=True)
    files = {}
    for name, code in extending_blocks().items():
        files[name] = directory / name
        if not files[name].exists() or files[name].read_text() != code:
            files[name].write_text(code)
    return files
