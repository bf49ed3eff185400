"""Phase "atomic" over HTTP: the cases of ../atomic.yaml, asked through the openai provider."""

import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("../atomic.yaml"))
def test_atomic(case, llm):
    reply = llm.ask(case.prompt)
    case.check(reply)
