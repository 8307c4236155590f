"""Headless Chromium loads the quality page from a real gunicorn: what a person sees, and no console errors."""

from __future__ import annotations

import os

import pytest
import requests

from tests.support import browser
from tests.support.project import REPO
from tests.support.server import SAMPLE, Server, wait_for


def test_chromium_shows_every_panel_with_the_served_model_and_no_console_errors(
    mart, champion, tmp_path
):
    if browser.CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":  # CI promises the browser: its absence fails
            pytest.fail("CI=true but Debian's chromium is not installed (.ci/run installs it)")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    token = mart.create_token("browser-sensor", "sensor")
    server = Server(tmp_path, mart.url, champion, POTABILITY_PAGE_REFRESH_SECONDS="1")
    try:
        r = requests.post(
            server.base + "/v1/predict",
            json={"samples": [SAMPLE] * 50},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200
        # the page is the renderer's copy: wait for the one made after these answers were logged
        assert wait_for(
            lambda: "browser-sensor" in requests.get(server.base + "/", timeout=10).text
        )
        # a screenshot for a person; the test reads the page itself
        artifacts = REPO / "tests" / "artifacts"
        artifacts.mkdir(exist_ok=True)
        page = browser.load(server.base + "/", screenshot=artifacts / "quality-page.png")
    finally:
        server.stop()
    assert page.headings[0].startswith("Drinking-water potability")
    for heading in (
        "Model card",
        "Promotion history",
        "Deployments",
        "Lab agreement",
        "Input drift",
    ):
        assert heading in page.headings, (heading, page.headings)
    assert any(h.startswith("Live answers") for h in page.headings), page.headings
    assert {"model-card", "live", "agreement", "drift"} <= set(page.sections), page.sections
    # the model card names the model the registry serves, and the live panel the answers just given
    assert f"version {champion.model_version}" in page.text, page.text[:2000]
    assert "no model has been deployed" not in page.text
    assert "50 answers." in page.text and "browser-sensor" in page.text
    assert page.svgs >= 1 and "<svg" in page.html  # the charts are drawn, not only their captions
    assert not page.errors, page.errors
