"""Integrity under races and faults (issue 11): no human label lost, no duplicate score,
no run left `running`, one-line errors for impossible ids.

Concurrency tests release threads together with a barrier, 100 trials each, on SQLite
and on PostgreSQL, against a real database file or server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
from sqlalchemy import select

from gloss.pipeline.cli import main
from gloss.pipeline.labeling import explain_features, score_features
from gloss.pipeline.settings import ExplainerConfig
from gloss.store import (
    REPLACE_MACHINE,
    ConflictError,
    InputError,
    MinedFeature,
    NotFoundError,
    PromptRef,
    open_store,
)
from gloss.store.models import Explanation, LLMCall, Review, Run, Score
from tests.mined import token_features
from tests.scripted_llm import Fault

TRIALS = 100
PROMPT = PromptRef("explain-openai", "1", "h")
WORDS = ["cat", "bridge", "violin", "river", "money", "song"]


def race(*fns: Callable[[], Any]) -> list[Any]:
    """Run the functions in threads released together; each result or the exception raised."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except Exception as error:  # noqa: BLE001 - the test inspects it
            results[i] = error

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def bare_features(store, n: int) -> list[int]:
    subject = store.get_or_create_subject("race", "/models/race", "r1", "toy")
    source = store.get_or_create_source(subject, "layer.0.mlp", "neurons", n, "r" * 8)
    store.write_mined_features(source, [MinedFeature(i, 1.0, 0.1, 0.1, 10, None) for i in range(n)])
    return [f.id for f in sorted(store.features(source), key=lambda f: f.index)]


def model_label(store, feature_id: int, text: str = "a model label", **kw) -> int:
    return store.add_explanation(
        feature_id, text, author_kind="model", author_name="llm", model="m", prompt=PROMPT, **kw
    )


def rows(store, model, *where) -> list[Any]:
    with store.session() as s:
        return list(s.scalars(select(model).where(*where)).all())


# ---------------------------------------------------------------- reviews race (item 2)


def test_accept_and_reject_of_one_version_never_both_win(store):
    ids = bare_features(store, TRIALS)
    for feature_id in ids:
        label = model_label(store, feature_id)
        version = store.explanation(label).version

        def act(action: str, feature_id=feature_id, label=label, version=version) -> Callable:
            return lambda: store.review(
                feature_id,
                action,
                f"{action}er",
                expected_explanation_id=label,
                expected_version=version,
            )

        results = race(act("accept"), act("reject"))
        won = [r for r in results if not isinstance(r, Exception)]
        lost = [r for r in results if isinstance(r, Exception)]
        assert len(won) == 1 and len(lost) == 1, results
        assert isinstance(lost[0], ConflictError), repr(lost[0])
        trail = rows(store, Review, Review.feature_id == feature_id)
        assert len(trail) == 1
        assert store.explanation(label).status == trail[0].after["status"]


def test_two_first_edits_of_an_unlabeled_feature_give_one_label_and_a_conflict(store):
    ids = bare_features(store, TRIALS)
    for feature_id in ids:

        def edit(name: str, feature_id=feature_id) -> Callable[[], Any]:
            return lambda: store.review(
                feature_id,
                "edit",
                name,
                text=f"label by {name}",
                expected_explanation_id=None,
                expected_version=0,
            )

        results = race(edit("ann"), edit("bo"))
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 1 and isinstance(errors[0], ConflictError), results
        current = store.current_explanation(feature_id)
        assert current.id in results
        trail = rows(store, Review, Review.feature_id == feature_id)
        assert [r.after["text"] for r in trail] == [current.text]


# ---------------------------------------------------------------- the human rule (items 1, 3)


def test_a_model_label_racing_a_human_edit_never_supersedes_it(store):
    ids = bare_features(store, TRIALS)
    for feature_id in ids:
        model_label(store, feature_id, "the old model label")
        results = race(
            lambda f=feature_id: model_label(
                store, f, "a new model label", replace=REPLACE_MACHINE
            ),
            lambda f=feature_id: store.review(f, "edit", "ann", text="what ann wrote"),
        )
        assert not any(isinstance(r, Exception) for r in results), results
        current = store.current_explanation(feature_id)
        assert (current.text, current.author_kind) == ("what ann wrote", "human")
        statuses = {e.text: e.status for e in store.explanations(feature_id)}
        assert statuses["a new model label"] in ("candidate", "superseded")


def test_an_accepted_label_is_protected_like_a_human_one(store):
    feature_id, other = bare_features(store, 2)
    accepted = model_label(store, feature_id)
    store.review(feature_id, "accept", "ann")
    new = model_label(store, feature_id, "a second opinion")
    assert store.current_explanation(feature_id).id == accepted
    assert store.explanation(accepted).status == "accepted"
    assert store.explanation(new).status == "candidate"
    assert store.make_current(new) is False
    assert store.make_current(new, replace="all") is True
    assert store.explanation(accepted).status == "superseded"
    # A baseline only labels an unlabeled feature.
    baseline = store.add_explanation(
        other, "tokens 'x'", author_kind="baseline", author_name="b", replace="none"
    )
    assert store.explanation(baseline).status == "proposed"
    later = store.add_explanation(
        other, "tokens 'y'", author_kind="baseline", author_name="b", replace="none"
    )
    assert store.explanation(later).status == "candidate"


def test_a_human_label_written_while_its_model_label_is_in_flight_is_kept(store, server):
    """The explain stage checked "no current label" before calling the LLM; a reviewer
    labels the feature during the call; the model label must not supersede it."""
    _, ids = token_features(store, WORDS)
    server.latency_s = 0.5
    thread = threading.Thread(
        target=explain_features,
        args=(store, ids, server.config(concurrency=2)),
        kwargs={"explainer": ExplainerConfig(score=False)},
    )
    thread.start()
    while not server.requests:
        threading.Event().wait(0.01)
    for feature_id in ids:
        store.review(feature_id, "edit", "ann", text=f"ann's label {feature_id}")
    thread.join(60)
    for feature_id in ids:
        current = store.current_explanation(feature_id)
        assert current.author_kind == "human", feature_id
    models = rows(store, Explanation, Explanation.author_kind == "model")
    assert models and {e.status for e in models} == {"candidate"}, "in flight, then kept aside"
    assert len(server.requests) < len(ids), "features labeled meanwhile were not asked again"


def test_explain_force_keeps_human_and_accepted_labels(sqlite_url, server, capsys):
    with open_store(sqlite_url) as store:
        _, ids = token_features(store, WORDS[:3])
        explain_features(store, ids, server.config(), explainer=ExplainerConfig(score=False))
        accepted = store.current_explanation(ids[0]).id
        store.review(ids[0], "accept", "ann")
        human = store.review(ids[1], "edit", "ann", text="ann's words")
        old = store.current_explanation(ids[2]).id
    args = ["--db", sqlite_url, "explain", "--base-url", server.base_url, "--llm-model", "scripted"]
    assert main([*args, "--relabel", "--no-score"]) == 0
    with open_store(sqlite_url) as store:
        assert store.current_explanation(ids[0]).id == accepted
        assert store.explanation(accepted).status == "accepted"
        assert store.current_explanation(ids[1]).id == human
        assert store.current_explanation(ids[2]).id != old
        assert store.explanation(old).status == "superseded"
    assert main([*args, "--relabel", "--relabel-human", "--no-score"]) == 0
    with open_store(sqlite_url) as store:
        assert store.current_explanation(ids[1]).author_kind == "model"
        assert store.explanation(accepted).status == "superseded"


# ---------------------------------------------------------------- no duplicate work (item 5)


def test_two_scorers_at_once_write_each_score_once_and_pay_once(store, server):
    _, ids = token_features(store, WORDS)
    explain_features(store, ids, server.config(), explainer=ExplainerConfig(score=False))
    server.requests.clear()
    server.latency_s = 0.2
    results = race(
        lambda: score_features(store, ids, server.config(concurrency=2)),
        lambda: score_features(store, ids, server.config(concurrency=2)),
    )
    assert not any(isinstance(r, Exception) for r in results), results
    assert sum(r.scored for r in results) == len(ids)
    scores = rows(store, Score)
    assert len(scores) == len({s.explanation_id for s in scores}) == len(ids)
    assert len([r for r in server.requests if r["kind"] == "simulate"]) == len(ids)


def test_two_explainers_at_once_label_each_feature_once(store, server):
    _, ids = token_features(store, WORDS)
    server.latency_s = 0.2
    results = race(
        lambda: explain_features(store, ids, server.config(concurrency=2)),
        lambda: explain_features(store, ids, server.config(concurrency=2)),
    )
    assert not any(isinstance(r, Exception) for r in results), results
    models = rows(store, Explanation, Explanation.author_kind == "model")
    assert sorted(e.feature_id for e in models) == sorted(ids)
    assert len([r for r in server.requests if r["kind"] == "explain"]) == len(ids)
    assert len(rows(store, Score)) == len(ids)
    for run in rows(store, Run):
        assert run.status in ("done", "partial"), (run.id, run.status)


# ---------------------------------------------------------------- runs end honestly (item 6)


def test_a_stage_that_crashes_is_recorded_failed(sqlite_store, server, monkeypatch):
    _, ids = token_features(sqlite_store, WORDS[:2])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the simulator client could not be built")

    monkeypatch.setattr("gloss.pipeline.labeling.make_clients", broken)
    with pytest.raises(RuntimeError):
        explain_features(sqlite_store, ids, server.config())
    with pytest.raises(RuntimeError):
        score_features(sqlite_store, ids, server.config())
    runs = sorted(sqlite_store.runs(), key=lambda r: r.id)
    assert [(r.kind, r.status) for r in runs] == [("explain", "failed"), ("score", "failed")]
    assert all(r.finished_at is not None for r in runs)


def test_one_features_unexpected_error_is_its_failure_not_the_runs(sqlite_store, server):
    """A well-formed answer of the wrong shape for one feature: recorded, the others labeled."""
    _, ids = token_features(sqlite_store, WORDS[:4])
    server.faults.append(Fault(body={"choices": [{"text": 123}]}, when="explain"))
    summary = explain_features(sqlite_store, ids, server.config(concurrency=1))
    assert summary.failed == 1 and summary.explained == 3
    (run,) = sqlite_store.runs()
    assert run.status == "partial"
    failed = [f for f in sqlite_store.features() if f.failures]
    assert len(failed) == 1 and failed[0].last_error


# ---------------------------------------------------------------- impossible ids (items 10, 11)


def test_impossible_ids_are_not_found_or_bad_input(store, capsys):
    (feature_id,) = bare_features(store, 1)
    huge = 99999999999999999999999
    for ref in (huge, str(huge), f"race/layer.0.mlp/neurons:{huge}", "²", -1):
        with pytest.raises((NotFoundError, InputError)):
            store.feature_card(ref)
    with pytest.raises(NotFoundError):
        store.review(huge, "note", "ann", note="hi")
    with pytest.raises(NotFoundError):
        store.explanation(-5)
    for kw in ({"offset": -1}, {"offset": huge}, {"limit": -1}, {"after": f"0.5:{huge}"},
               {"after": "nan:3"}, {"after": "1e999:3"}):  # fmt: skip
        with pytest.raises(InputError):
            store.search(**kw)
    with pytest.raises(InputError):
        store.next_to_review(skip=-1)
    assert main(["--db", store.url, "show", str(huge)]) == 4
    err = capsys.readouterr().err
    assert err.startswith("gloss: no feature") and len(err.strip().splitlines()) == 1


def test_control_characters_never_reach_a_label_or_note(store):
    (feature_id,) = bare_features(store, 1)
    for bad in ("nul\x00here", "esc\x1b]0;title\x07", "csi\x9b31m"):
        with pytest.raises(InputError):
            store.review(feature_id, "edit", "ann", text=bad)
        with pytest.raises(InputError):
            store.review(feature_id, "note", "ann", note=bad)
        with pytest.raises(InputError):
            model_label(store, feature_id, bad)
    store.review(
        feature_id, "edit", "ann", text="  two\n lines\tjoined ", note="line one\nline two"
    )
    current = store.current_explanation(feature_id)
    assert current.text == "two lines joined"
    assert store.reviews(feature_id)[0].note == "line one\nline two"


def test_the_ledger_keeps_answers_postgresql_cannot_hold(store):
    call = store.record_llm_call(
        request_hash="h",
        role="explainer",
        model="m",
        outcome="unusable",
        error="bad \x00 answer",
        response={"choices": [{"text": "a\x00b", "logprob": float("nan")}], "x": float("inf")},
    )
    (row,) = rows(store, LLMCall, LLMCall.id == call)
    assert row.response["choices"][0]["text"] == "a\ufffdb"
    assert row.response["choices"][0]["logprob"] == "nan" and row.response["x"] == "inf"
    assert "\x00" not in row.error


# ---------------------------------------------------------------- baseline labels (item 16)


def test_gloss_explain_baseline_labels_are_current_and_scored(sqlite_url, server, capsys):
    with open_store(sqlite_url) as store:
        token_features(store, WORDS[:3])
    assert main(["--db", sqlite_url, "explain", "--baseline"]) == 0
    capsys.readouterr()
    assert main(["--db", sqlite_url, "search", "--status", "unlabeled", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    args = ["--db", sqlite_url, "score", "--base-url", server.base_url, "--llm-model", "scripted"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scored"] == 3 and summary["skipped"] == 0


# ---------------------------------------------------------------- long calls say so (item 18)


def test_label_rescore_says_what_the_call_will_cost_before_it_starts(sqlite_url, server, capsys):
    with open_store(sqlite_url) as store:
        token_features(store, ["cat"], holdout_top=3, random_windows=2)
    args = ["--db", sqlite_url, "label", "toy/mlp.0/neurons:0", "the token 'cat'", "--by", "ann"]
    sim = ["--rescore", "--simulator-base-url", server.base_url, "--simulator-model", "scripted"]
    assert main([*args, *sim]) == 0
    captured = capsys.readouterr()
    estimate = captured.err.strip().splitlines()[0]
    assert estimate.startswith("re-scoring label #1 with scripted (logprobs): 5 held-out windows")
    assert "80 tokens to predict" in estimate and "prompt tokens to read" in estimate
    assert "simulation score: 0.9" in captured.out


def test_a_write_queued_on_the_store_worker_runs_even_if_its_caller_is_cancelled(sqlite_store):
    """A claim's release queued behind the claim itself, then cancelled by a second Ctrl-C,
    must still run: otherwise the claim outlives the process (seen once in CI)."""
    import asyncio
    import threading
    from contextlib import suppress

    from gloss.store import StoreWorker

    async def go() -> list[int]:
        db = StoreWorker(sqlite_store)
        gate, done = threading.Event(), []
        busy = asyncio.ensure_future(db(gate.wait, 5))  # holds the one writer thread
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(db(done.append, 1))
        await asyncio.sleep(0.05)
        queued.cancel()
        with suppress(asyncio.CancelledError):
            await queued
        gate.set()
        await busy
        db.close()  # waits for the writer's queue
        return done

    assert asyncio.run(go()) == [1]


@pytest.mark.parametrize("ending", ["done", "interrupted"])
def test_a_stage_leaves_no_claim_behind_however_it_ends(sqlite_store, ending):
    """A release lost while a stage unwinds (a cancellation race) must not hold the feature
    until its lease expires: the stage drops its holder's claims when it ends."""
    from gloss.pipeline.labeling import Summary, stage_run

    store = sqlite_store
    _, ids = token_features(store, ["river", "bank"])
    other = "elsewhere:1#1"
    assert store.claim(ids[1], "score", other)  # another process's claim stays
    with pytest.raises(KeyboardInterrupt) if ending == "interrupted" else nullcontext():
        with stage_run(store, None, "score", {}, Summary()) as (run_id, holder):
            assert store.claim(ids[0], "score", holder, run_id=run_id)
            if ending == "interrupted":
                raise KeyboardInterrupt
    assert [(c.feature_id, c.holder) for c in claims(store)] == [(ids[1], other)]
    assert store.runs()[0].status == ending


def claims(store) -> list[Any]:
    from gloss.store.models import Claim

    with store.session() as s:
        return list(s.scalars(select(Claim)).all())


def test_a_mining_unit_is_leased_to_one_live_holder(store):
    """Units overlap by feature range, whatever chunk size each process uses; an expired
    or own unit is taken over; a dead holder's units go with its claims."""
    subject = store.get_or_create_subject("s", "/s", "r", "bert")
    source = store.get_or_create_source(subject, "layer.0.mlp", "neurons", 64, "p")
    assert store.claim_unit(source, 0, 16, "a:1#1")
    assert not store.claim_unit(source, 8, 16, "b:2#1")  # overlaps 8..15
    assert store.claim_unit(source, 16, 16, "b:2#1")  # next to it
    assert store.claim_unit(source, 0, 16, "a:1#1")  # its own, again
    assert store.claim_unit(source, 32, 8, "c:3#1", lease_s=-1)  # already expired
    assert store.claim_unit(source, 32, 16, "b:2#1")  # taken over
    assert store.drop_claims("a:1#1") == 1
    assert store.claim_unit(source, 0, 8, "b:2#1")
    assert sorted(store.claim_holders()) == ["b:2#1"]


def test_workers_of_one_plan_join_one_group_and_the_last_out_ends_it(store):
    a_group, a = store.join_group("plan-1", {}, holder="h:1")
    b_group, b = store.join_group("plan-1", {}, holder="h:2")
    other, _ = store.join_group("plan-2", {}, holder="h:3")
    assert a_group == b_group != other and a != b
    assert store.leave_group(a_group, a, "done") is None  # b still works
    store.finish_run(b, "abandoned", "its process died")
    assert store.close_group(a_group) == "done"  # the dead worker does not count
    assert store.run(a_group).message.startswith("2 workers (1 done, 1 abandoned)")
    again, c = store.join_group("plan-1", {}, holder="h:4")
    assert again != a_group  # that group ended: a new one starts
    stale, _ = store.join_group("plan-1", {}, holder="h:5", stale_after_s=-1)
    assert stale != again  # a group without a recent heartbeat is not joined
    store.heartbeat("h:4", 300)
    assert store.run(again).heartbeat_at >= store.run(c).started_at
    assert store.leave_group(again, c, "partial", "budget reached") == "partial"


def test_a_group_budget_is_booked_across_its_workers(store):
    group, a = store.join_group("plan", {}, holder="h:1", max_tokens=100)
    _, b = store.join_group("plan", {}, holder="h:2")
    assert store.book_budget(group, a, 60, 0.0)
    assert not store.book_budget(group, b, 50, 0.0)  # 60 in flight + 50 > 100
    store.settle_budget(group, a, (60, 0.0), 30, 10, 0.0)  # the call spent 40
    assert store.book_budget(group, b, 50, 0.0)  # 40 spent + 50 in flight
    assert not store.book_budget(group, a, 20, 0.0)
    store.finish_run(b, "abandoned", "its process died")  # its bookings stop counting
    assert store.book_budget(group, a, 20, 0.0)
    run = store.run(group)
    assert (run.tokens_in, run.tokens_out, run.max_tokens) == (30, 10, 100)
    free, c = store.join_group("free", {}, holder="h:3")  # no budget: every call books
    assert all(store.book_budget(free, c, 10**9, 1e9) for _ in range(3))


@pytest.mark.slow
def test_processes_mining_one_source_split_it_and_mine_each_feature_once(db_url, tmp_path):
    """Three `gloss mine` processes started together on one database: every feature is
    mined by exactly one of them, and all finish."""
    import subprocess
    import sys

    from tests.test_mining import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    config = tmp_path / "gloss.toml"
    config.write_text(
        f'[corpus]\npaths = ["{corpus}"]\nctx_len = 16\n'
        "[mining]\nfeature_chunk = 32\nwrite_every = 32\nbatch_size = 16\n"
    )
    command = [sys.executable, "-m", "gloss.pipeline.cli", "--database", db_url, "mine",
               "--config", str(config), "--features", "0:512", "--json"]  # fmt: skip
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["features"] for r in results) == 512, results
    with open_store(db_url) as store:
        source_id = store.sources()[0].id
        features = store.features(source_id)
        mined_by = list(store.mining_runs(source_id).values())
        runs = {r.id: r for r in store.runs()}
        assert store.claim_holders() == []  # every unit released
    assert len(features) == 512 and all(f.status in ("mined", "dead") for f in features)
    assert sorted(mined_by.count(r["run"]) for r in results) == sorted(
        r["features"] for r in results
    )
    assert sum(r["features"] > 0 for r in results) >= 2, "the work was shared"
    # Each process accounts for every feature: mined, left to another, or mined before.
    assert sum(r["elsewhere"] for r in results) == 2 * 512 - sum(r["skipped"] for r in results)
    assert {runs[r["run"]].status for r in results} == {"done"}
