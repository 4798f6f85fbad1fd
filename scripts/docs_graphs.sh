#!/usr/bin/env bash
# The graphs of the documentation (docs/lecture.md shows them): python -m fnn graph's SVGs of
# the lecture's examples and of a small MLP, into docs/graphs/. Needs Graphviz (`dot`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dot >/dev/null || { echo "docs_graphs.sh: Graphviz's dot is not installed" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m fnn graph lecture --out "$work" >/dev/null
python -m fnn graph --model mlp --out "$work" >/dev/null
mkdir -p docs/graphs
for f in "$work"/*.svg; do   # call sites as paths in the repository, not this machine's
  sed "s|$PWD/||g" "$f" > "docs/graphs/$(basename "$f")"
done
echo "wrote $(ls docs/graphs/*.svg | tr '\n' ' ')"
