"""Property-based fuzzing of the HTTP API from its own OpenAPI document: never a 5xx, errors always as specified."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve import create_app, shutdown

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def fuzz_app(pg_url, champion, tmp_path_factory):
    from potability.mart import WaterMart

    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app({"DATABASE_URL": pg_url, **champion.app_config(tmp), "LOG_FLUSH_SECONDS": 0.05,
                      "SPOOL_DIR": str(tmp / "spool"), "TESTING": True})  # fmt: skip
    mart = WaterMart(url=pg_url)
    tokens = {role: mart.create_token(f"fuzz-{role}", role) for role in ("sensor", "lab")}
    spec = app.test_client().get("/openapi.json").get_json()
    yield app, tokens, spec
    shutdown(app)


def value_for(schema: dict):
    """Values a client might send for one property: valid, at and past the bounds, wrong types."""
    low, high = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
    return st.one_of(
        st.none(),
        st.floats(min_value=low, max_value=high),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(
            [low, high, low - 1e-9, high + 1, -1, 0, "NaN", "Infinity", "", "7.0", True]
        ),
        ANY_JSON,
    )


def sample_strategy(spec: dict, name: str):
    props = spec["components"]["schemas"][name]["properties"]
    fields = {key: value_for(schema) for key, schema in props.items()}
    return st.fixed_dictionaries({}, optional=fields) | st.dictionaries(
        st.text(max_size=12), ANY_JSON, max_size=3
    )


def assert_contract(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    body = json.loads(response.get_data(as_text=True))
    if response.status_code >= 400:
        error = body["error"]
        assert set(error) >= {"code", "message", "field"} and error["message"]


@pytest.mark.parametrize(
    ("path", "schema", "role"),
    [("/v1/predict", "Sample", "sensor"), ("/v1/samples", "LabSample", "lab")],
)
def test_fuzz_endpoint_from_openapi(fuzz_app, path, schema, role):
    app, tokens, spec = fuzz_app
    client = app.test_client()
    headers = {"Authorization": f"Bearer {tokens[role]}"}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.one_of(sample_strategy(spec, schema),
                          st.fixed_dictionaries({"samples": st.lists(sample_strategy(spec, schema), max_size=5)}),
                          ANY_JSON))  # fmt: skip
    def check(body):
        if path == "/v1/samples" and isinstance(body, dict) and "sample_id" in body:
            body["sample_id"] = str(body["sample_id"])[:50]
        assert_contract(
            client.post(
                path, data=json.dumps(body), headers={**headers, "Content-Type": "application/json"}
            )
        )

    check()


@given(raw=st.binary(max_size=200))
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_raw_bytes_never_5xx(fuzz_app, raw):
    app, tokens, _ = fuzz_app
    response = app.test_client().post("/v1/predict", data=raw, headers={"Authorization": f"Bearer {tokens['sensor']}",
                                                                        "Content-Type": "application/json"})  # fmt: skip
    assert_contract(response)
