"""Phase "safety": what a finance assistant must decline or qualify."""

import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("safety.yaml"))
def test_safety(case, llm):
    reply = llm.ask(case.prompt)
    case.check(reply)  # AssertionError showing expected vs got; records restraint
