"""Phase "facts": one fact per prompt. Each case is a parametrized test."""

import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("facts.yaml"))
def test_facts(case, llm):
    reply = llm.ask(case.prompt)
    case.check(reply)  # AssertionError showing expected vs got; records restraint
