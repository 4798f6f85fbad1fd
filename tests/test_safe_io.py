"""Every file fnn writes goes through fnn.train.files.write_file (O_NOFOLLOW, a temporary file
and an atomic rename in a folder held by identity): this test reads fnn/ for every other way
of writing a file and fails naming the file and line. (Issue 24: a symlinked .lock or
vocab.json.tmp had the file it pointed to truncated or overwritten; savefig, safetensors'
save_file and open(..., "w") wrote wherever a path led.)"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAFE = os.path.join("fnn", "train", "files.py")  # the one module that writes files
# what else may write, and why: a graph's .dot in a folder the user names, written by the
# checkers' layer (6), which cannot use fnn.train (7); never a run directory
ALLOWED = {(os.path.join("fnn", "check", "graph.py"), 'with open(path, "w") as fh:')}

WRITES = {
    "open() for writing": r"\bopen\([^)]*['\"][rbt]*[wax+][rwxabt+]*['\"]",
    "os.open() for writing": r"\bO_(WRONLY|RDWR|CREAT|APPEND|TRUNC)\b",
    "pathlib write": r"\.write_(text|bytes)\(",
    "savefig to a path": r"\.savefig\((?!buf\b)",
    "safetensors' writers": r"\bsave_file\(|safetensors\.\w+\.save\(",
    "numpy/pickle/json to a file": r"\b(np|numpy)\.save[z]?\(|\bpickle\.dump\(|\bjson\.dump\(",
    "renames and copies": r"\bos\.(replace|rename|renames|link|symlink)\(|\bshutil\.(copy\w*|move)\(",
    "raw writes": r"\bos\.(write|pwrite|truncate|ftruncate)\(",
    "temporary files": r"\btempfile\.(mkstemp|mktemp|NamedTemporaryFile|TemporaryFile)\(",
}
BAD_EXAMPLES = {  # each pattern must catch what it is there for
    "open() for writing": 'with open(tmp, "w") as f:',
    "os.open() for writing": "fd = os.open(self.path, os.O_RDWR | os.O_CREAT)",
    "pathlib write": 'Path(p).write_text("x")',
    "savefig to a path": "fig.savefig(path, dpi=100)",
    "safetensors' writers": "safetensors.numpy.save_file(tensors, path)",
    "numpy/pickle/json to a file": "json.dump(obj, f)",
    "renames and copies": "os.replace(tmp, path)",
    "raw writes": "os.ftruncate(fd, 0)",
    "temporary files": "fd, tmp = tempfile.mkstemp(dir=d)",
}


def test_the_patterns_catch_what_they_are_for():
    for what, line in BAD_EXAMPLES.items():
        assert re.search(WRITES[what], line), what
    assert not re.search(WRITES["open() for writing"], 'with open(path, "rb") as f:')
    assert not re.search(WRITES["savefig to a path"], 'fig.savefig(buf, format="png")')


def sources():
    for folder, _, names in os.walk(os.path.join(ROOT, "fnn")):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), path


@pytest.mark.parametrize("what", sorted(WRITES))
def test_nothing_writes_a_file_but_fnn_train_files(what):
    found = []
    for rel, path in sources():
        if rel == SAFE:
            continue
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            code = line.split("#")[0]
            if re.search(WRITES[what], code) and (rel, line.strip()) not in ALLOWED:
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, f"{what} outside {SAFE} (use fnn.train.files.write_file):\n" + "\n".join(
        found
    )
