"""A recorded tape with its saved arrays taken out, to replay its backward pass elsewhere.

A loop's backward (backpropagation through time) runs the body's backward once per step, inside
a compiled reverse loop. The body is recorded once, while the forward loop is traced: its tape's
records are the same at every step, only the arrays the gates saved differ. `Template.capture`
splits a tape into that fixed structure and the list of saved arrays (the residuals the forward
loop stacks, one per step); `Template.rebuild(residuals)` puts a step's arrays back, giving a
tape whose backward is the step's backward.

A saved leaf that is one of `invariants` (a value the loop body closes over, the same at every
step) is referred to by position rather than stacked; a saved leaf that is a concrete array or
not an array at all (a shape, a dtype) stays in the template as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.autodiff.tape import Record, Tape


def _spec(x):
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


@dataclasses.dataclass
class _Slot:
    """Where a saved leaf comes from: 'residual' (index into the step's residuals),
    'invariant' (index into the loop's invariants) or 'fixed' (the value itself)."""

    kind: str
    value: Any


@dataclasses.dataclass
class Template:
    records: list  # (Record with shapes for inputs/outs and saved=None, saved treedef, slots)
    n_nodes: int
    residual_specs: list  # ShapeDtypeStruct of each residual

    @classmethod
    def capture(cls, tape: Tape, invariants=()) -> tuple["Template", list]:
        """(template, residuals): the tape without its traced saved arrays, and those arrays."""
        by_id = {id(v): k for k, v in enumerate(invariants)}
        residuals, records = [], []
        for rec in tape.records:
            # an overriding rule reads the gate's inputs and output, not only what it saved
            kept = rec.saved if rec.rule is None else (rec.saved, rec.inputs, rec.outs)
            leaves, tree = jax.tree_util.tree_flatten(kept)
            slots = []
            for leaf in leaves:
                if id(leaf) in by_id:
                    slots.append(_Slot("invariant", by_id[id(leaf)]))
                elif isinstance(leaf, jax.core.Tracer):
                    slots.append(_Slot("residual", len(residuals)))
                    residuals.append(leaf)
                else:
                    slots.append(_Slot("fixed", leaf))
            shell = dataclasses.replace(
                rec,
                inputs=jax.tree_util.tree_map(_spec, rec.inputs),
                outs=tuple(_spec(o) for o in rec.outs),
                saved=None,
            )
            records.append((shell, tree, slots))
        return cls(records, tape.n_nodes, [_spec(r) for r in residuals]), residuals

    def rebuild(self, residuals, invariants=()) -> Tape:
        """A tape of this template's records with a step's `residuals` (and the loop's
        `invariants`) as what the gates saved."""
        tape = Tape()
        tape.n_nodes = self.n_nodes
        for shell, tree, slots in self.records:
            leaves = [
                residuals[s.value]
                if s.kind == "residual"
                else invariants[s.value]
                if s.kind == "invariant"
                else s.value
                for s in slots
            ]
            kept = jax.tree_util.tree_unflatten(tree, leaves)
            if shell.rule is None:
                tape.records.append(dataclasses.replace(shell, saved=kept))
            else:
                saved, inputs, outs = kept
                tape.records.append(
                    dataclasses.replace(shell, saved=saved, inputs=inputs, outs=tuple(outs))
                )
        return tape


__all__ = ["Record", "Template"]
