"""Re-scoring a reviewer's label with the simulator, through a real (scripted) HTTP LLM endpoint."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient  # noqa: E402

from gloss.pipeline.rescore import rescore  # noqa: E402
from gloss.review.app import create_app  # noqa: E402
from gloss.store import InputError  # noqa: E402


@pytest.fixture
def llm():
    from gloss.pipeline.llm import EndpointConfig, LLMConfig
    from tests.scripted_llm import ScriptedLLM

    with ScriptedLLM() as server:
        endpoint = EndpointConfig(
            model="scripted", base_url=server.base_url, api_key="test", backoff_s=0.01
        )
        yield LLMConfig(explainer=endpoint, simulator=endpoint)


def test_a_right_human_label_scores_high_and_a_wrong_one_low(sqlite_store, llm):
    from tests.mined import token_features

    store = sqlite_store
    _, (cat, violin) = token_features(store, ["cat", "violin"])
    right = store.review(cat, "edit", "ana", text="the token 'cat'")
    wrong = store.review(violin, "edit", "ana", text="the token 'bridge'")
    high, low = rescore(store, right, llm), rescore(store, wrong, llm)
    assert high > 0.9 and (low is None or low < 0.3)
    scored = store.explanation(right)
    assert scored.score == pytest.approx(high)
    assert scored.scores[-1].simulator_model == "scripted"
    assert scored.author_kind == "human"
    store.review(cat, "reject", "ana")
    with pytest.raises(InputError, match="current label"):
        rescore(store, right, llm)


def test_rescore_button_in_the_app(sqlite_store, llm):
    from tests.mined import token_features

    store = sqlite_store
    _, (cat,) = token_features(store, ["cat"])
    label = store.review(cat, "edit", "ana", text="the token 'cat'")
    app = create_app(store, reviewer="ana", rescorer=lambda s, e: rescore(s, e, llm))
    with TestClient(app) as client:
        page = client.get(f"/features/{cat}")
        assert 'id="rescore"' in page.text and "unscored" in page.text
        response = client.post(
            f"/features/{cat}/rescore",
            data={"csrf": client.cookies.get("gloss_csrf"), "explanation_id": label},
            follow_redirects=False,
        )
        assert response.status_code == 303
        for _ in range(600):  # the job runs in the background: poll the page like a browser
            page = client.get(f"/features/{cat}").text
            if 'class="job done"' in page or 'class="job failed"' in page:
                break
            time.sleep(0.05)
        assert 'class="job done"' in page, page
        assert "simulation <b>0.9" in page
    assert store.explanation(label).score > 0.9
