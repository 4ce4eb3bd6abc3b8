"""The Markdown report every bench writes the same way: title, date, the command that made
it, what the bench measures (its module docstring after the usage line), the table and the
chart."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def write(path: Path, title: str, doc: str, text: str, png: Path) -> None:
    command = " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    about = doc.split("\n", 2)[2]
    path.write_text(f"# {title}\n\nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
                    f"\n\nCommand (as root): `{command}`\n\n{about}\n{text}\n\n"
                    f"![{png.stem}]({png.name})\n")
