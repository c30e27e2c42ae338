"""``tfopt.causal_lm.parse_step_shapes``: the decoder adapters' ``shapes`` / ``bench_shapes`` option values."""

from __future__ import annotations

import pytest

from tfopt.causal_lm import StepShape, parse_step_shapes
from tfopt.errors import TfoptError


def test_triples_become_step_shapes_in_order():
    assert parse_step_shapes("1,32,1; 4,0,8;", "bench_shapes") == [StepShape(1, 32, 1), StepShape(4, 0, 8)]


@pytest.mark.parametrize("value", ["", "1,2", "1,2,3,4", "a,1,1", "0,4,1", "2,4,0", "2,-1,1"])
def test_anything_else_is_one_line_naming_the_option(value):
    with pytest.raises(TfoptError) as caught:
        parse_step_shapes(value, "bench_shapes")
    message = str(caught.value)
    assert message.startswith("bench_shapes must be batch,past,new_tokens triples") and "\n" not in message
