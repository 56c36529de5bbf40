"""Rollouts in process (cas/rollouts.py over a real store, a settable clock): staged
stages and the health gate, halt/resume/abort, all-at-once and flip-back, batches,
concurrent evaluators, bad input changing nothing, lifecycle --move-channel-to, and
cohort sizes of the client's rule."""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
from conftest import store_snapshot

from cas import channels, keys, publisher, releases, rollouts
from cas.clock import FileClock
from cas.config import load_config
from cas.errors import CasError
from cas.repo import Repo, open_repo
from cas.trees import scan_tree
from casformat.canonical import parse_json
from casformat.manifests import check_channel
from casformat.trust import choose_release, in_cohort

HOUR = 3600


@pytest.fixture
def clock(tmp_path: Path) -> FileClock:
    c = FileClock(tmp_path / "clock")
    c.set(1_900_000_000)
    return c


@pytest.fixture
def repo(tmp_path: Path, metadata_url: str) -> Repo:  # once per metadata backend
    store = tmp_path / "store"
    store.mkdir()
    (store / "config.toml").write_text('webhooks = [{url = "http://127.0.0.1:9/hook", secret = "s3cret"}]\n')
    repo = open_repo(load_config(store, env={}, metadata_url=metadata_url))
    keys.init_keys(store, repo.meta)
    repo.reload_keys()
    signing = keys.load_role_keys(store, "release")
    for i, status in enumerate(["released", "released", "released", "testing"]):
        tree_dir = tmp_path / f"t{i}"
        (tree_dir / "bin").mkdir(parents=True)
        (tree_dir / "bin" / "app").write_text(f"app {i}\n")
        version = f"1.{i}.0"
        publisher.publish_local(repo, scan_tree(tree_dir), publisher.signed_manifest("app", version,
                                                                                     scan_tree(tree_dir), signing))
        for s in (["testing", "released"] if status == "released" else ["testing"]):
            releases.move_status(repo, "app", version, s, "test")
    channels.set_channel(repo, "app", "stable", "1.0.0")
    return repo


def signed(repo: Repo, channel: str = "stable") -> dict:
    return check_channel(parse_json(channels.get_channel(repo, "app", channel).document)["signed"])


def report(repo: Repo, clock: FileClock, client: str, outcome: str, to: str = "1.1.0") -> None:
    repo.meta.add_report("app", client, "1.0.0", to, outcome, "", clock.now())


def code_of(exc: pytest.ExceptionInfo[CasError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


# --------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("stages", [[0, 5], [5, 101], [5, 5], [25, 5], [], "1,x", [1.5], [True], "-1,5"])
def test_bad_stages_are_refused(stages) -> None:
    with pytest.raises(CasError) as exc:
        rollouts.parse_stages(stages)
    assert code_of(exc) == (422, "bad_stages")


@pytest.mark.parametrize("rate", ["1.5", "-0.1", "abc", "NaN", 0.05, True, "0.00001"])
def test_bad_rates_are_refused(rate) -> None:
    with pytest.raises(CasError) as exc:
        rollouts.parse_rate(rate)
    assert code_of(exc) == (422, "bad_rate")


def test_parsing_accepts_good_values() -> None:
    assert rollouts.parse_stages("1,5,25,100") == (1, 5, 25, 100)
    assert rollouts.parse_rate("0.05") == 500 and rollouts.parse_rate(1) == 10000
    assert [rollouts.parse_duration(v) for v in ("30s", "10m", "1h", "2d", "90", 5)] == [30, 600, 3600,
                                                                                           172800, 90, 5]
    with pytest.raises(CasError):
        rollouts.parse_duration("1 week")


# --------------------------------------------------------------------------- staged

def test_staged_rollout_advances_through_stages_and_finishes(repo: Repo, clock: FileClock) -> None:
    before = signed(repo)
    r = rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", stages="1,50,100", stage_duration="1h",
                       max_failure_rate="0.25", min_reports=2)
    doc = signed(repo)
    assert doc["sequence"] == before["sequence"] + 1 and doc["release"] == "1.0.0"
    assert doc["rollout"] == {"release": "1.1.0", "manifest": r.manifest, "percent": 1, "salt": r.salt}
    assert rollouts.evaluate(repo, clock) == []                      # nothing before the duration
    report(repo, clock, "a", "success")
    report(repo, clock, "b", "success")
    assert rollouts.evaluate(repo, clock) == []                      # reports but the hour is not over
    clock.advance(HOUR)
    steps = rollouts.evaluate(repo, clock)
    assert [(s["action"], s["percent"]) for s in steps] == [("advance", 50)]
    doc2 = signed(repo)
    assert doc2["rollout"]["percent"] == 50 and doc2["rollout"]["salt"] == r.salt
    assert doc2["sequence"] == doc["sequence"] + 1
    clock.advance(HOUR)
    assert rollouts.evaluate(repo, clock) == []                      # the new stage has no reports yet
    report(repo, clock, "c", "success")
    report(repo, clock, "d", "failed")                               # 1/2 > 0.25: halts
    assert rollouts.evaluate(repo, clock)[0]["action"] == "halt"
    assert rollouts.status(repo, clock, "app", "stable")["state"] == "halted"
    rollouts.act(repo, clock, "app", "stable", "resume", "test", "false alarm")
    for c in "efgh":
        report(repo, clock, c, "success")
    clock.advance(HOUR)
    assert [s["action"] for s in rollouts.evaluate(repo, clock)] == ["advance"]
    for c in "ij":
        report(repo, clock, c, "success")
    clock.advance(HOUR)
    assert [s["action"] for s in rollouts.evaluate(repo, clock)] == ["finish"]
    final = signed(repo)
    assert final["release"] == "1.1.0" and final["rollout"] is None and final["manifest"] == r.manifest
    data = rollouts.status(repo, clock, "app", "stable")
    assert data["state"] == "finished"
    assert [e["event"] for e in data["events"]] == ["started", "stage", "halted", "resumed", "stage", "finished"]
    # Every step left a webhook in the outbox (delivered later, in the background).
    events = [d["event"] for d in repo.meta.webhook_summary()["deliveries"]]
    assert {"rollout.started", "rollout.stage", "rollout.halted", "rollout.finished"} <= set(events)


def test_unhealthy_stage_halts_early_and_abort_restores_previous(repo: Repo, clock: FileClock) -> None:
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", stages=[10, 100], min_reports=20,
                   max_failure_rate="0.05")
    seq = signed(repo)["sequence"]
    report(repo, clock, "a", "rolled_back")                          # 1 <= 0.05 * 20: tolerated
    assert rollouts.evaluate(repo, clock) == []
    report(repo, clock, "b", "failed")                               # 2 > 0.05 * 20: halt at once
    assert rollouts.evaluate(repo, clock)[0]["action"] == "halt"
    halted = signed(repo)                                            # halting stops new installs:
    assert halted["sequence"] == seq + 1 and halted["release"] == "1.0.0" and halted["rollout"] is None
    clock.advance(10 * HOUR)
    assert rollouts.evaluate(repo, clock) == []                      # halted: never advances by itself
    with pytest.raises(CasError) as exc:
        rollouts.act(repo, clock, "app", "stable", "promote", "test")
    assert code_of(exc) == (409, "rollout_halted")
    rollouts.act(repo, clock, "app", "stable", "abort", "test", "bad build")
    doc = signed(repo)
    assert doc["sequence"] == seq + 2 and doc["release"] == "1.0.0" and doc["rollout"] is None
    assert rollouts.status(repo, clock, "app", "stable")["state"] == "aborted"
    # The channel is free again.
    rollouts.start(repo, clock, "app", "stable", "1.2.0", "test", stages=[100])


def test_auto_abort(repo: Repo, clock: FileClock) -> None:
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", stages=[5, 100], min_reports=1,
                   max_failure_rate="0.5", auto_abort=True)
    report(repo, clock, "a", "failed")
    assert rollouts.evaluate(repo, clock)[0]["action"] == "abort"
    assert signed(repo)["rollout"] is None and signed(repo)["release"] == "1.0.0"


def test_promote_skips_the_gate_and_last_stage_below_100_waits(repo: Repo, clock: FileClock) -> None:
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", stages=[5, 20], min_reports=0)
    clock.advance(HOUR)
    assert rollouts.evaluate(repo, clock)[0]["percent"] == 20
    clock.advance(HOUR)
    assert rollouts.evaluate(repo, clock) == []                      # 20% is the last stage: wait
    rollouts.act(repo, clock, "app", "stable", "promote", "test")
    assert signed(repo)["release"] == "1.1.0" and signed(repo)["rollout"] is None


def test_concurrent_evaluators_apply_one_step(repo: Repo, clock: FileClock) -> None:
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", stages=[1, 5, 25, 100], min_reports=0)
    seq = signed(repo)["sequence"]
    clock.advance(HOUR)
    results: list[list] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        results.append(rollouts.evaluate(repo, clock))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r) for r in results) == 1
    assert signed(repo)["sequence"] == seq + 1 and signed(repo)["rollout"]["percent"] == 5


# --------------------------------------------------------------------------- bad input

def test_bad_rollout_requests_change_nothing(repo: Repo, clock: FileClock, tmp_path: Path) -> None:
    store = repo.config.store
    cases = [
        (dict(version="9.9.9"), (404, "unknown_release")),
        (dict(version="1.0.0"), (409, "same_release")),
        (dict(version="1.3.0"), (409, "status_too_low")),            # testing on a released channel
        (dict(version="1.1.0", stages=[50, 10]), (422, "bad_stages")),
        (dict(version="1.1.0", stages=[0, 100]), (422, "bad_stages")),
        (dict(version="1.1.0", max_failure_rate="2"), (422, "bad_rate")),
        (dict(version="1.1.0", strategy="canary"), (422, "bad_strategy")),
        (dict(version="1.1.0", strategy="batches", clients=[]), (422, "bad_clients")),
        (dict(version="1.1.0", strategy="batches", clients=["a", "a"], batch_size=1), (422, "bad_clients")),
    ]
    before = store_snapshot(store)
    for kwargs, expected in cases:
        version = kwargs.pop("version")
        with pytest.raises(CasError) as exc:
            rollouts.start(repo, clock, "app", "stable", version, "test", **kwargs)
        assert code_of(exc) == expected, kwargs
    with pytest.raises(CasError) as exc:
        rollouts.start(repo, clock, "app", "nightly", "1.1.0", "test")
    assert code_of(exc) == (404, "unknown_channel")
    assert store_snapshot(store) == before
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test")
    before = store_snapshot(store)
    with pytest.raises(CasError) as exc:
        rollouts.start(repo, clock, "app", "stable", "1.2.0", "test")
    assert code_of(exc) == (409, "rollout_exists")
    with pytest.raises(CasError) as exc:
        channels.set_channel(repo, "app", "stable", "1.2.0")
    assert code_of(exc) == (409, "rollout_active")
    with pytest.raises(CasError) as exc:
        releases.move_status(repo, "app", "1.1.0", "deprecated", "test")
    assert code_of(exc) == (409, "release_in_use")
    with pytest.raises(CasError) as exc:
        rollouts.act(repo, clock, "app", "stable", "resume", "test")
    assert code_of(exc) == (409, "rollout_not_halted")
    assert store_snapshot(store) == before


def test_too_many_batch_clients_is_refused(repo: Repo, clock: FileClock) -> None:
    ids = [f"client-{i:06d}-{'x' * 40}" for i in range(2000)]         # ~100 KiB of ids
    with pytest.raises(CasError) as exc:
        rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", strategy="batches", clients=ids,
                       batch_size=10)
    assert code_of(exc) == (422, "too_many_clients")


# --------------------------------------------------------------------------- lifecycle

def test_deprecate_with_move_channel_to(repo: Repo, clock: FileClock) -> None:
    channels.set_channel(repo, "app", "beta", "1.0.0")
    before = store_snapshot(repo.config.store)
    with pytest.raises(CasError) as exc:                             # 1.3.0 is only testing: refused first
        releases.move_status(repo, "app", "1.0.0", "deprecated", "test", "yank", move_channel_to="1.3.0")
    assert code_of(exc) == (409, "status_too_low")
    with pytest.raises(CasError) as exc:
        releases.move_status(repo, "app", "1.0.0", "deprecated", "test", "yank", move_channel_to="9.9.9")
    assert code_of(exc) == (404, "unknown_release")
    assert store_snapshot(repo.config.store) == before
    moved = releases.move_status(repo, "app", "1.0.0", "deprecated", "ops", "CVE-1", move_channel_to="1.2.0")
    assert moved.status == "deprecated"
    assert signed(repo, "stable")["release"] == "1.2.0" and signed(repo, "beta")["release"] == "1.2.0"
    history = repo.meta.release_history("app", "1.0.0")
    assert history[-1]["actor"] == "ops" and "CVE-1" in history[-1]["reason"]
    assert "stable" in history[-1]["reason"]


# --------------------------------------------------------------------------- other strategies

def test_all_at_once_flips_and_flips_back(repo: Repo, clock: FileClock) -> None:
    seq = signed(repo)["sequence"]
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", strategy="all-at-once", min_reports=1,
                   stage_duration="10m")
    assert signed(repo)["release"] == "1.1.0" and signed(repo)["rollout"] is None
    report(repo, clock, "a", "success")
    clock.advance(600)
    assert rollouts.evaluate(repo, clock)[0]["action"] == "finish"
    rollouts.act(repo, clock, "app", "stable", "flip-back", "test", "blue again")
    doc = signed(repo)
    assert doc["release"] == "1.0.0" and doc["sequence"] == seq + 2
    with pytest.raises(CasError) as exc:
        rollouts.act(repo, clock, "app", "stable", "flip-back", "test")
    assert code_of(exc) == (409, "rollout_not_active")


def test_batches_admit_listed_clients_batch_by_batch(repo: Repo, clock: FileClock) -> None:
    ids = [f"host-{i}" for i in range(5)]
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", strategy="batches", clients=ids,
                   batch_size=2, stage_duration="10m", max_failures=1)
    doc = signed(repo)
    assert doc["rollout"]["clients"] == ids[:2] and doc["rollout"]["percent"] == 0
    assert [choose_release(doc, c)[0] for c in ids] == ["1.1.0", "1.1.0", "1.0.0", "1.0.0", "1.0.0"]
    report(repo, clock, "host-0", "success")
    clock.advance(600)
    assert rollouts.evaluate(repo, clock) == []                      # host-1 has not reported yet
    report(repo, clock, "host-1", "success")
    report(repo, clock, "stranger", "failed")                        # not in the list: ignored
    assert rollouts.evaluate(repo, clock)[0]["action"] == "advance"
    assert signed(repo)["rollout"]["clients"] == ids[:4]
    report(repo, clock, "host-2", "rolled_back")
    assert rollouts.evaluate(repo, clock)[0]["action"] == "halt"
    rollouts.act(repo, clock, "app", "stable", "abort", "test")
    assert signed(repo)["rollout"] is None


def test_batches_finish_when_every_client_reported(repo: Repo, clock: FileClock) -> None:
    ids = ["a", "b", "c"]
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", strategy="batches", clients=ids,
                   batch_size=2, stage_duration=0, max_concurrent=5)
    for c in ids[:2]:
        report(repo, clock, c, "success")
    assert rollouts.evaluate(repo, clock)[0]["action"] == "advance"
    report(repo, clock, "c", "success")
    assert rollouts.evaluate(repo, clock)[0]["action"] == "finish"
    assert signed(repo)["release"] == "1.1.0" and signed(repo)["rollout"] is None


def test_outbox_rows_carry_event_bodies(repo: Repo, clock: FileClock) -> None:
    rollouts.start(repo, clock, "app", "stable", "1.1.0", "test", reason="go")
    rows = repo.meta.claim_webhooks(clock.now() + 1, 60)
    started = [r for r in rows if r["event"] == "rollout.started"]
    assert started and started[0]["url"] == "http://127.0.0.1:9/hook"
    body = json.loads(bytes(started[0]["body"]))
    assert body["data"]["release"] == "1.1.0" and body["data"]["reason"] == "go"


# --------------------------------------------------------------------------- cohorts (client rule)

@pytest.mark.parametrize("percent", [1, 5, 25, 50, 99])
def test_cohort_sizes_within_statistical_bounds(percent: int) -> None:
    n = 10_000
    salt = "5eed" * 8
    size = sum(in_cohort(salt, f"client-{i}", percent) for i in range(n))
    p = percent / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(size - n * p) <= 5 * sigma, (percent, size)


def test_cohorts_only_grow_with_a_fixed_salt() -> None:
    salt = "ab" * 16
    ids = [f"c{i}" for i in range(10_000)]
    previous: set[str] = set()
    for percent in (1, 5, 25, 100):
        cohort = {c for c in ids if in_cohort(salt, c, percent)}
        assert previous <= cohort
        previous = cohort
    assert len(previous) == len(ids)
