"""Every example of the README and the documentation site (docs/*.md) runs.

- A ```python block runs; the blocks of one page run in order, in one namespace, in a fresh
  process of 8 host CPU devices (the pages on several devices need them) whose working directory
  is a temporary folder (what an example writes goes there).
- A ```pycon block (`>>>` lines and what they print) runs as a doctest in the same namespace:
  what the page shows printed is compared with what is printed (`...` matches anything;
  whitespace is compared loosely).
- `<!-- test-setup ... -->` (an HTML comment: not shown on the page) holds code run at that
  point of the page: the small data an example takes as given (`params`, `x`, `y`).
- `<!-- no-run: REASON -->` on the line before a block skips it; the site shows the reason
  (docs/hooks.py).
- A ```bash block is not run (training runs take minutes): each `python -m fnn ...` (or
  `fnn ...`) command in it is parsed by the command line's own parser, so an option that does
  not exist, or a bad value, fails here.

Run one page's examples by hand: `python tests/test_docs_examples.py docs/lecture.md`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
    re.S | re.M,
)
SETUP = re.compile(r"^<!-- test-setup\n(?P<code>.*?)^-->[ \t]*$", re.S | re.M)
NO_RUN = re.compile(r"<!-- no-run: (.+?) -->[ \t]*\n$")


def blocks(text: str):
    """(kind, code, line, no_run_reason) of each example of a page, in order: kind is python,
    pycon, setup or shell; the others (text, output) are left out."""
    found = []
    for m in SETUP.finditer(text):
        found.append((m.start(), "setup", m.group("code"), None))
    for m in FENCE.finditer(text):
        lang = m.group("lang").lower()
        kind = {
            "python": "python",
            "py": "python",
            "pycon": "pycon",
            "bash": "shell",
            "sh": "shell",
            "console": "shell",
            "shell": "shell",
        }.get(lang)
        if kind is None:
            continue
        code = m.group("code")
        indent = m.group("indent")
        if indent:
            code = "".join(
                line[len(indent) :] if line.startswith(indent) else line
                for line in code.splitlines(True)
            )
        before = text[: m.start()]
        reason = NO_RUN.search(before[-400:])
        found.append((m.start(), kind, code, reason.group(1) if reason else None))
    return [
        (kind, code, text.count("\n", 0, start) + 1, reason)
        for start, kind, code, reason in sorted(found)
    ]


# ---- shell blocks: python -m fnn commands parsed by fnn's parser ------------------------------
def fnn_commands(code: str):
    """The argv of each `python -m fnn ...` or `fnn ...` command of a shell block (continuation
    lines joined, comments dropped; a command ends at `&&`, `|`, `;` or `&`)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        i = 0
        while i < len(words):
            if words[i : i + 3] == ["python", "-m", "fnn"]:
                start = i + 3
            elif words[i] == "fnn" and (i == 0 or words[i - 1] in ("&&", ";", "|")):
                start = i + 1
            else:
                i += 1
                continue
            end = start
            while end < len(words) and words[end] not in ("&&", "|", ";", "&", "||"):
                end += 1
            commands.append(words[start:end])
            i = end
    return commands


def parse_command(argv):
    """Parse one command's argv with `python -m fnn`'s parser (and the argv of the command that
    `launch` starts); an argparse error raises SystemExit(2)."""
    from fnn.cli import build_parser

    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()) as err,
    ):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help and --version exit 0
            if e.code:
                raise AssertionError(
                    f"python -m fnn {shlex.join(argv)}: {err.getvalue()}"
                ) from None
            return
    if argv and argv[0] == "launch" and "--" in argv:
        rest = argv[argv.index("--") + 1 :]
        if rest and not rest[0].endswith(".py"):
            parse_command(rest)
    return args


# ---- python blocks: run in a process of their own ---------------------------------------------
def run_page(path: str) -> None:
    """Run the python, pycon and setup blocks of one page, in order, in this process (what the
    test starts in a subprocess); exits 1 at the first block that fails."""
    import doctest
    import traceback

    page = Path(path).resolve()
    name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    namespace = {"__name__": "__main__"}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for kind, code, line, reason in blocks(page.read_text()):
        if reason or kind == "shell":
            continue
        where = f"{name}:{line}"
        print(f"--- {where} ({kind})", flush=True)
        if kind == "pycon":
            test = doctest.DocTestParser().get_doctest(code, namespace, where, str(name), line)
            result = runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest runs in a copy of the namespace
            if result.failed:
                sys.exit(
                    f"{where}: {result.failed} of {result.attempted} examples printed "
                    "something else than the page shows (above)"
                )
            continue
        try:
            exec(compile("\n" * (line) + code, str(name), "exec"), namespace)
        except Exception:
            traceback.print_exc()
            sys.exit(f"{where}: the {kind} block raised (above)")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _runnable(page: Path) -> bool:
    return any(kind != "shell" and not reason for kind, _, _, reason in blocks(page.read_text()))


if __name__ != "__main__":
    import pytest

    @pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=page_id)
    def test_python_examples_run(page, tmp_path):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "XLA_FLAGS": (
                os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
            ).strip(),
            "JAX_PLATFORMS": "cpu",
            "MPLBACKEND": "Agg",
        }
        proc = subprocess.run(
            [sys.executable, __file__, str(page)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]

    @pytest.mark.parametrize("page", PAGES, ids=page_id)
    def test_shell_examples_parse(page):
        commands = [
            argv
            for kind, code, _, reason in blocks(page.read_text())
            if kind == "shell" and not reason
            for argv in fnn_commands(code)
        ]
        for argv in commands:
            parse_command(argv)

    def test_blocks_are_found():
        """The parser of pages finds fenced blocks (indented too), setup comments and no-run
        reasons."""
        text = (
            "<!-- test-setup\nx = 1\n-->\n\n<!-- no-run: slow -->\n```python\nx = 2\n```\n\n"
            "- item\n\n  ```bash\n  python -m fnn train --epochs 1 \\\n    --lr 0.1 && ls\n  ```\n"
            "```text\nout\n```\n"
        )
        assert blocks(text) == [
            ("setup", "x = 1\n", 1, None),
            ("python", "x = 2\n", 6, "slow"),
            ("shell", "python -m fnn train --epochs 1 \\\n  --lr 0.1 && ls\n", 12, None),
        ]
        assert fnn_commands(blocks(text)[2][1]) == [["train", "--epochs", "1", "--lr", "0.1"]]
        parse_command(["train", "--epochs", "1"])
        with pytest.raises(AssertionError, match="--no-such-option"):
            parse_command(["train", "--no-such-option"])

    def test_every_page_has_examples_checked():
        """No page's examples are all skipped silently: each skip gives its reason."""
        for page in PAGES:
            for _kind, _code, line, reason in blocks(page.read_text()):
                assert reason is None or reason.strip(), f"{page_id(page)}:{line}"


if __name__ == "__main__":
    run_page(sys.argv[1])
