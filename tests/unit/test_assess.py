"""What follows a pass (reconciler.assess): backoff in and out, crash-loop verdicts, retries (no Docker)."""

from __future__ import annotations

import random

from reconciler.assess import WAITING_RECHECK, History, Note, PassSummary, Rules, assess
from reconciler.backoff import BackoffPolicy, HostBackoff

RULES = Rules(BackoffPolicy(base=2.0, jitter=0.0), crashloop_attempts=3, crashloop_window=300.0)


def summary(
    failed: dict[str, str] | None = None,
    repaired: dict[str, list[str]] | None = None,
    observed: set[str] | None = None,
    desired: set[str] | None = None,
    waiting: bool = False,
) -> PassSummary:
    return PassSummary(
        failed or {},
        repaired or {},
        frozenset({"h1", "h2"} if observed is None else observed),
        frozenset({"h1", "h2"} if desired is None else desired),
        waiting,
    )


def test_a_host_that_fails_enters_backoff_with_its_retry_time() -> None:
    history = History()
    verdict = assess(summary(failed={"h1": "engine down"}), 100.0, history, RULES, random.Random(1))
    assert verdict.history.hosts["h1"] == HostBackoff(failures=1, retry_at=102.0, last_error="engine down")
    assert verdict.notes == (Note("h1", "backoff", "failure 1: next try in 2.0s"),)
    assert verdict.entered == {"h1"} and verdict.cleared == {"h2"} and not verdict.degraded
    assert set(verdict.waiting) == {"h1"}
    assert verdict.retry_in == 2.0 + 0.01  # a pass just after the window ends
    assert history == History()  # what was given is left as it was

    again = assess(summary(failed={"h1": "engine down"}), 102.5, verdict.history, RULES, random.Random(1))
    assert again.history.hosts["h1"].failures == 2 and again.history.hosts["h1"].retry_at == 106.5
    assert again.notes == (Note("h1", "backoff", "failure 2: next try in 4.0s"),)
    assert verdict.history.hosts["h1"].failures == 1  # the earlier history is not changed in place


def test_a_host_that_recovers_leaves_backoff() -> None:
    history = History({"h1": HostBackoff(failures=3, retry_at=50.0, last_error="down", degraded=True)})
    verdict = assess(summary(), 60.0, history, RULES, random.Random(1))
    assert "h1" not in verdict.history.hosts  # a host without failures has no entry (reads as ok)
    assert verdict.cleared == {"h1", "h2"} and not verdict.entered
    assert verdict.notes == () and verdict.waiting == {} and verdict.retry_in is None
    assert history.hosts["h1"].failures == 3


def test_a_host_not_observed_keeps_its_backoff_and_its_retry() -> None:
    history = History({"h1": HostBackoff(failures=1, retry_at=50.0, last_error="down")})
    verdict = assess(summary(observed={"h2"}), 49.0, history, RULES, random.Random(1))
    assert verdict.history.hosts["h1"].failures == 1 and set(verdict.waiting) == {"h1"}
    assert verdict.retry_in is not None and abs(verdict.retry_in - 1.01) < 1e-9
    late = assess(summary(observed={"h2"}), 51.0, history, RULES, random.Random(1))
    assert late.retry_in == 0.01 and late.waiting == {}  # the window ended during the pass: at once
    gone = assess(summary(observed={"h2"}, desired={"h2"}), 49.0, history, RULES, random.Random(1))
    assert gone.retry_in is None  # a host no longer desired asks for nothing


def test_a_crash_looping_container_gets_its_verdict_and_degrades_its_host() -> None:
    history = History()
    for now in (0.0, 10.0):
        verdict = assess(summary(repaired={"h1": ["consul"]}), now, history, RULES, random.Random(1))
        assert verdict.notes == () and not verdict.degraded
        history = verdict.history
    assert history.repairs == {("h1", "consul"): (0.0, 10.0)}
    verdict = assess(
        summary(failed={"h1": "start failed"}, repaired={"h1": ["consul", "registrator"]}),
        20.0,
        history,
        RULES,
        random.Random(1),
    )
    assert verdict.notes == (
        Note(
            "h1",
            "degraded",
            "crash loop: consul needed repair 3 times within 300s; host degraded, next try in 2.0s",
        ),
    )  # one verdict for the host: its failure this pass is not noted again
    state = verdict.history.hosts["h1"]
    assert state.degraded and state.failures == 1 and state.retry_at == 22.0
    assert verdict.degraded == {"h1"} and verdict.entered == {"h1"}
    assert verdict.retry_in == 2.0 + 0.01
    assert history.repairs == {("h1", "consul"): (0.0, 10.0)}  # the history given is unchanged


def test_no_failure_means_no_retry_and_a_waiting_rollout_looks_again_soon() -> None:
    verdict = assess(summary(), 5.0, History(), RULES, random.Random(1))
    assert verdict.notes == () and verdict.retry_in is None and verdict.recheck_in is None
    assert verdict.history.hosts == {}  # hosts without failures have no entry
    waiting = assess(summary(waiting=True), 5.0, History(), RULES, random.Random(1))
    assert waiting.recheck_in == WAITING_RECHECK and waiting.retry_in is None


def test_jitter_comes_from_the_rng_given() -> None:
    jittery = Rules(BackoffPolicy(base=10.0, jitter=0.2))
    first = assess(summary(failed={"h1": "x", "h2": "y"}), 0.0, History(), jittery, random.Random(7))
    second = assess(summary(failed={"h1": "x", "h2": "y"}), 0.0, History(), jittery, random.Random(7))
    assert first == second
    assert all(8.0 <= s.retry_at <= 12.0 for s in first.history.hosts.values())


def test_a_pass_is_summarized_failures_first_then_unreachable_engines() -> None:
    from types import SimpleNamespace as NS

    from reconciler.assess import summarize
    from reconciler.plan import Kind

    def done(host: str, kind: Kind, name: str, status: str, error: str | None = None) -> NS:
        return NS(action=NS(host=host, kind=kind, name=name), status=status, error=error)

    result = NS(
        applied=NS(
            results=[
                done("h1", Kind.CREATE, "consul", "failed", "pull failed"),
                done("h1", Kind.START, "registrator", "failed"),
                done("h2", Kind.START, "consul", "succeeded"),
                done("h2", Kind.CREATE, "registrator", "succeeded"),
                done("h3", Kind.REMOVE, "old", "succeeded"),
            ]
        ),
        plan=NS(unreachable={"h1": "later", "h4": "no route"}),
        observed=NS(hosts=[NS(name="h1"), NS(name="h2"), NS(name="h3")]),
        status="waiting",
    )
    got = summarize(result, ["h1", "h2", "h3", "h4"])  # type: ignore[arg-type]
    assert got.failed == {"h1": "pull failed", "h4": "no route"}
    assert list(got.failed) == ["h1", "h4"]
    assert got.repaired == {"h2": ["consul", "registrator"]}  # a removal is no repair
    assert got.observed == {"h1", "h2", "h3"} and got.desired == {"h1", "h2", "h3", "h4"}
    assert got.waiting


def test_hosts_in_backoff_are_deferred_with_why_and_when() -> None:
    history = History(
        hosts={
            "h1": HostBackoff(failures=2, retry_at=105.0),
            "h2": HostBackoff(failures=4, retry_at=130.0, degraded=True),
            "h3": HostBackoff(failures=1, retry_at=99.0),  # its window is over
        }
    )
    assert history.deferred(100.0) == {
        "h1": "backing off after 2 failure(s); next try in 5.0s",
        "h2": "backing off after 4 failure(s); next try in 30.0s (degraded: crash loop)",
    }


def test_an_assessment_asks_for_the_passes_that_follow_it() -> None:
    rules = Rules(backoff=BackoffPolicy(base=1.0, cap=1.0, jitter=0.0))
    failed = assess(summary(failed={"h1": "boom"}), 100.0, History(), rules, random.Random(1))
    assert [(r.reason, r.after > 0) for r in failed.requeues()] == [("backoff-retry", True)]
    waiting = assess(summary(waiting=True), 100.0, History(), rules, random.Random(1))
    assert [(r.reason, r.after) for r in waiting.requeues()] == [("rollout-wait", WAITING_RECHECK)]
    assert assess(summary(), 100.0, History(), rules, random.Random(1)).requeues() == []


def test_repairs_older_than_the_crash_loop_window_are_forgotten() -> None:
    """A container repaired once long ago counts as never repaired: the history keeps only the repairs
    inside the window (else a fleet created once is carried, and copied, on every pass for ever)."""
    first = assess(
        summary(repaired={"h1": ["consul"], "h2": ["registrator"]}), 100.0, History(), RULES, random.Random(1)
    )
    assert first.history.repairs == {("h1", "consul"): (100.0,), ("h2", "registrator"): (100.0,)}
    inside = assess(summary(repaired={"h2": ["registrator"]}), 350.0, first.history, RULES, random.Random(1))
    assert inside.history.repairs == {("h1", "consul"): (100.0,), ("h2", "registrator"): (100.0, 350.0)}
    later = assess(summary(), 401.0, inside.history, RULES, random.Random(1))  # 100 is out of the 300 s
    assert later.history.repairs == {("h2", "registrator"): (350.0,)}
    assert assess(summary(), 651.0, later.history, RULES, random.Random(1)).history.repairs == {}
