"""Phase "calc": multi-step arithmetic on money."""

import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("calc.yaml"))
def test_calc(case, llm):
    reply = llm.ask(case.prompt)
    case.check(reply)  # AssertionError showing expected vs got; records restraint
