import math

import pytest

from potability.schema import FEATURE_NAMES, FieldError, validate_features, validate_lab_row

GOOD = {
    "ph": 7.0,
    "Hardness": 200.0,
    "Solids": 20000.0,
    "Chloramines": 7.0,
    "Sulfate": 330.0,
    "Conductivity": 420.0,
    "Organic_carbon": 14.0,
    "Trihalomethanes": 66.0,
    "Turbidity": 4.0,
}


def test_good_sample_passes_and_absent_is_missing():
    values = validate_features({k: v for k, v in GOOD.items() if k != "Sulfate"})
    assert values["Sulfate"] is None
    assert values["ph"] == 7.0
    assert list(values) == list(FEATURE_NAMES)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("ph", 15.2, "outside"),
        ("ph", -0.1, "outside"),
        ("Solids", 250_000, "outside"),
        ("Conductivity", 9_000, "outside"),
        ("Turbidity", 5_000, "outside"),
        ("Sulfate", -3, "outside"),
        ("Sulfate", "abc", "number"),
        ("Hardness", "NaN", "finite"),
        ("Hardness", "inf", "finite"),
        ("Chloramines", True, "number"),
        ("Chloramines", [1], "number"),
    ],
)
def test_bad_values_name_the_field(field, value, words):
    with pytest.raises(FieldError) as err:
        validate_features({**GOOD, field: value}, index=3)
    assert err.value.field == field
    assert err.value.index == 3
    assert words in err.value.message
    assert field in str(err.value) and "[3]" in str(err.value)


def test_unknown_field_and_all_missing_are_refused():
    with pytest.raises(FieldError) as err:
        validate_features({**GOOD, "pH": 7})
    assert err.value.field == "pH"
    with pytest.raises(FieldError, match="every measurement is missing"):
        validate_features({name: None for name in FEATURE_NAMES})


def test_lab_row_needs_id_and_verdict():
    row = validate_lab_row({**GOOD, "sample_id": "a1", "Potability": "1"})
    assert row["Potability"] == 1 and row["sample_id"] == "a1"
    with pytest.raises(FieldError) as err:
        validate_lab_row({**GOOD, "sample_id": "a1"})
    assert err.value.field == "Potability"
    with pytest.raises(FieldError) as err:
        validate_lab_row({**GOOD, "Potability": 1})
    assert err.value.field == "sample_id"
    with pytest.raises(FieldError):
        validate_lab_row({**GOOD, "sample_id": "a", "Potability": 2})
    assert not math.isnan(row["ph"])


def test_fast_path_accepts_exactly_what_the_validator_accepts():
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from potability.schema import fast_feature_matrix

    value = st.one_of(
        st.none(),
        st.integers(-5, 200_000),
        st.floats(-10, 200_000, allow_nan=False),
        st.text(max_size=3),
    )
    sample = st.dictionaries(st.sampled_from([*FEATURE_NAMES, "extra"]), value, max_size=10)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(sample, min_size=1, max_size=4))
    def check(items):
        fast = fast_feature_matrix(items)
        try:
            slow = [validate_features(item, strict=True) for item in items]
        except FieldError:
            assert fast is None  # the fast path never lets through what the validator refuses
            return
        assert fast is not None  # ... and never sends a valid batch down the slow path
        expected = np.array(
            [[np.nan if s[n] is None else s[n] for n in FEATURE_NAMES] for s in slow]
        )
        assert np.array_equal(fast, expected, equal_nan=True)

    check()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a\x00b", "NUL"),
        ("a\ud800", "surrogate"),
        ("x" * 201, "longer than 200"),
        (" ", "required"),
    ],
)
def test_bad_ids_name_the_field(value, words):
    for field in ("sample_id", "sensor_id"):
        row = {**GOOD, "sample_id": "ok", "Potability": 1, field: value}
        if field == "sensor_id" and words == "required":
            assert validate_lab_row(row)["sensor_id"] is None  # a blank sensor is no sensor
            continue
        with pytest.raises(FieldError, match=words) as err:
            validate_lab_row(row)
        assert err.value.field == field


def test_json_bodies_take_the_types_the_document_gives():
    assert validate_features({**GOOD, "ph": "7.0"})["ph"] == 7.0  # a CSV cell
    for field, value in (
        ("ph", "7.0"),
        ("Potability", "1"),
        ("Potability", True),
        ("collected_at", ""),
    ):
        with pytest.raises(FieldError) as err:
            validate_lab_row({**GOOD, "sample_id": "a", "Potability": 1, field: value}, strict=True)
        assert err.value.field == field
    row = validate_lab_row(
        {**GOOD, "sample_id": "a", "Potability": 1, "collected_at": "2026-01-01t23:00:00-20:00"},
        strict=True,
    )
    assert row["collected_at"] == "2026-01-02T19:00:00+00:00"  # stored in UTC (Postgres: ±15:59)


def test_huge_integer_is_a_field_error_not_a_crash():
    with pytest.raises(FieldError) as err:
        validate_features({**GOOD, "Solids": 10**400})
    assert err.value.field == "Solids"
