"""The shared validators: generated values either pass as the right type or raise a library
error that names the field and shows the value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvene_like.errors import ConfigError, LocationError
from pyvene_like.validation import (
    check_bool,
    check_choice,
    check_fits_dtype,
    check_int,
    check_int_list,
    check_number,
    check_optional_positive_int,
    check_positive_int,
    is_int,
)

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.lists(st.integers(), max_size=3), st.complex_numbers(),
)


@given(anything)
def test_positive_int_accepts_exactly_positive_non_bool_ints(value):
    good = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if good:
        assert check_positive_int(value, "steps") == value
    else:
        with pytest.raises(ConfigError, match=r"steps must be a positive int, got ") as info:
            check_positive_int(value, "steps")
        assert repr(value) in str(info.value)


@given(anything, st.integers(-5, 5), st.integers(0, 10))
def test_check_int_bounds(value, lo, span):
    hi = lo + span
    good = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    if good:
        assert check_int(value, "layer", minimum=lo, maximum=hi, error=LocationError) == value
    else:
        with pytest.raises(LocationError, match=rf"layer must be an int in {lo}\.\.{hi}, got "):
            check_int(value, "layer", minimum=lo, maximum=hi, error=LocationError)


@given(anything)
def test_check_number_is_finite_and_not_bool(value):
    good = (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
    if good:
        assert check_number(value, "temperature", positive=True) == float(value)
    else:
        with pytest.raises(ConfigError, match="temperature must be a positive finite number, got "):
            check_number(value, "temperature", positive=True)


def test_numpy_ints_are_ints_and_bools_are_not():
    assert is_int(np.int64(3)) and check_positive_int(np.int32(2), "k") == 2
    assert not is_int(True) and not is_int(np.float32(1.0)) and not is_int(1.0)
    assert check_optional_positive_int(None, "k") is None
    with pytest.raises(ConfigError, match="k must be a positive int or None, got 0"):
        check_optional_positive_int(0, "k")


@given(anything)
def test_check_bool_takes_only_bools(value):
    if isinstance(value, bool):
        assert check_bool(value, "flag") is value
    else:
        with pytest.raises(ConfigError, match="flag must be True or False, got "):
            check_bool(value, "flag")


def test_check_choice_says_what_is_accepted_and_suggests():
    assert check_choice("cosine", "scheduler", ["linear", "cosine"]) == "cosine"
    with pytest.raises(ConfigError, match=r"scheduler 'cosin' is not accepted; accepted: 'linear', 'cosine'\. "
                                          r"Did you mean 'cosine'\?"):
        check_choice("cosin", "scheduler", ["linear", "cosine"])
    with pytest.raises(ConfigError, match=r"scheduler \[1\] is not accepted"):
        check_choice([1], "scheduler", ["linear"])  # unhashable


@given(st.lists(anything, max_size=4))
def test_check_int_list_names_the_bad_entry(values):
    bad = [i for i, v in enumerate(values) if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)]
    if not values:
        with pytest.raises(ConfigError, match="heads must be a non-empty list of non-negative ints"):
            check_int_list(values, "heads", minimum=0)
    elif not bad:
        assert check_int_list(values, "heads", minimum=0) == values
    else:
        with pytest.raises(ConfigError, match=rf"heads\[{bad[0]}\] must be a non-negative int, got "):
            check_int_list(values, "heads", minimum=0)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_check_fits_dtype_keeps_exactly_the_numbers_within_float32s_range_and_not_rounded_to_0(value):
    import torch

    as_f32 = torch.tensor(value, dtype=torch.float32)
    stays = abs(value) <= torch.finfo(torch.float32).max and (value == 0 or float(as_f32) != 0)
    try:
        assert check_fits_dtype(value, "scale") == value and stays
    except ConfigError as e:
        assert not stays and "scale" in str(e) and repr(value) in str(e)


def test_check_fits_dtype_headroom_and_other_dtypes():
    import torch

    with pytest.raises(ConfigError, match=r"level must fit in float16 \(\|value\| <= 6550, leaving room for 10x\), got 7000"):
        check_fits_dtype(7000, "level", torch.float16, headroom=10)
    assert check_fits_dtype(6000.0, "level", "float16") == 6000.0
    with pytest.raises(LocationError, match=r"eps rounds to 0 in bfloat16"):
        check_fits_dtype(1e-45, "eps", "bfloat16", error=LocationError)
