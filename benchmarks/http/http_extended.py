"""Phase "extended" over HTTP: the cases of ../extended.yaml, asked through the openai provider."""

import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("../extended.yaml"))
def test_extended(case, llm):
    reply = llm.ask(case.prompt)
    case.check(reply)
