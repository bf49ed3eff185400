"""Phase "extended": multi-step questions."""

import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("extended.yaml"))
def test_extended(case, llm):
    reply = llm.ask(case.prompt)
    case.check(reply)
