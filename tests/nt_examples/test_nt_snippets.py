"""neural-tangents 0.6.5's README code and docstring examples, ported by changing their import lines
only, print its numbers (what ``test_nt_examples.py`` checks of its example programs; see there)."""
import pytest

from tests.nt_examples.test_nt_examples import META, PRINTED, SLOW, check_against_reference

SNIPPETS = ("readme", "doc_stax_15", "doc_stax_combinators_73", "doc_stax_linear_133", "doc_stax_linear_267",
            "doc_stax_linear_2709", "doc_empirical_15")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in SNIPPETS])
def test_snippet_prints_neural_tangents_numbers(name):
    assert not META["programs"][name]["error"], META["programs"][name]["error"]
    assert PRINTED[name] or name in ("doc_stax_combinators_73", "doc_stax_linear_2709"), \
        "a reference that prints nothing checks nothing"
    check_against_reference(name)
