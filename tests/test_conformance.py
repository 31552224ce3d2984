"""ONNX conformance: the node tests of every op afmc claims (``supported_op_types()``: the ``nn``
ops, the ops with their own import handler, the ones converted away), through ``afmc.backend``.

A node test is selected when the op it tests is claimed; its ``_expanded`` variants (the op's
function body) come along. Cases that use a feature afmc does not support (an element type such as
float8 or bfloat16, an op outside the claimed set in an expansion, a shape that depends on a
run-time input) are skipped by the backend with the frontend's ``UnsupportedError`` message;
everything else must pass.
"""

from __future__ import annotations

import re
import warnings

import onnx.backend.test
from onnx.backend.test.loader import load_model_tests

from afmc.backend import AfmcBackend
from afmc.frontend.importer import supported_op_types

_EXPANDED = re.compile(r"^(?P<base>.*?)_expanded(_ver\d+)?$")


def _selected_node_tests() -> list[str]:
    """Names of node tests whose op under test (the one non-Constant op of the base test) we claim."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators cast NaN/inf to integers on purpose
        cases = {case.name: case for case in load_model_tests(kind="node")}
    claimed = supported_op_types()
    selected = []
    for name in cases:
        match = _EXPANDED.match(name)
        base = cases.get(match.group("base") if match else name)
        if base is None:
            continue
        tested = {node.op_type for node in base.model.graph.node if node.op_type != "Constant"}
        if len(tested) == 1 and tested <= claimed:
            selected.append(name)
    return sorted(selected)


SELECTED = _selected_node_tests()

_PATTERN = "^(" + "|".join(re.escape(name) for name in SELECTED) + ")_cpu$"

backend_test = onnx.backend.test.BackendTest(AfmcBackend, __name__)
backend_test.include(_PATTERN)

# BackendTest keeps every other test as a skip ("no matched include pattern"); drop them so that
# the skip count only holds real skips.
for _class_name, _case in backend_test.test_cases.items():
    for _attr in [a for a in vars(_case) if a.startswith("test_") and not re.search(_PATTERN, a)]:
        delattr(_case, _attr)
    if any(a.startswith("test_") for a in vars(_case)):
        globals()[_class_name] = _case
