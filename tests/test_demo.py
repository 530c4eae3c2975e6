"""`tov demo`: the seeded data splits (tweets among Wikipedia/BBC text; a Wikipedia topic),
the gate's reading, ToV's two halves, the ETA and the verdict (fast); the whole demo and its
gate in their --small size (slow, real model)."""

import contextlib
import dataclasses
import io
import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest

from tov_datasets import assets, cli, demo, evaluation, report, textrows
from tov_datasets.select import select_indices
from tov_datasets.trajectory import ROW

TOPIC_SMALL = demo.config_for(small=True, topic="Mathematics")


@pytest.fixture(scope="module")
def split():
    return demo.prepare_data(TOPIC_SMALL)


@pytest.fixture(scope="module")
def tokenizer():
    return assets.demo_tokenizer()


def test_config_for_picks_the_size_and_the_target():
    assert demo.config_for() == demo.DEFAULT and demo.DEFAULT.target == demo.TWEETS
    assert demo.config_for(small=True, seed=3) == demo.SMALL.replace(seed=3)
    assert demo.config_for(topic="Arts") == demo.TOPIC.replace(target="Arts")
    assert TOPIC_SMALL == demo.SMALL.replace(target="Mathematics")


def test_topic_split_is_disjoint_has_the_target_share_and_is_seeded(split):
    config = TOPIC_SMALL
    assert len(split.val) == config.val_size and len(split.test) == config.test_size
    assert set(split.val["topic"]) == set(split.test["topic"]) == {config.target}
    val, test, pool = (set(ds["title"]) for ds in (split.val, split.test, split.pool))
    assert not (val & test) and not (val & pool) and not (test & pool)
    topics = np.asarray(list(split.pool["topic"]))
    assert len(split.pool) == config.pool_size and split.group_column == "topic"
    np.testing.assert_array_equal(split.groups, topics)
    np.testing.assert_array_equal(split.is_target, topics == config.target)
    assert split.is_target.sum() == config.pool_targets >= 2 * config.n
    names, counts = np.unique(topics[~split.is_target], return_counts=True)
    assert names.size == 11 and counts.max() - counts.min() <= 1
    assert counts.sum() == config.pool_size - config.pool_targets
    again = demo.prepare_data(config)
    assert again.pool["title"] == split.pool["title"] and again.val["title"] == split.val["title"]
    other = demo.prepare_data(config.replace(seed=1))
    assert set(other.val["title"]) != val


@pytest.mark.parametrize("config", [demo.SMALL, demo.DEFAULT], ids=["small", "default"])
def test_tweet_split_is_the_text_row_builder_with_the_target_share(config, tokenizer):
    data = demo.prepare_data(config, tokenizer)
    pool, val, test = textrows.tweets_among_text(
        config.seed, textrows.token_length(tokenizer), pool_size=config.pool_size,
        target_in_pool=round(config.pool_size * config.target_share), val_size=config.val_size,
        test_size=config.test_size, min_tokens=config.min_tokens, max_tokens=config.max_tokens)
    assert data.pool.to_list() == pool and data.val.to_list() == val
    assert data.test.to_list() == test
    assert data.group_column == "source"
    np.testing.assert_array_equal(data.groups, [r["source"] for r in pool])
    np.testing.assert_array_equal(data.is_target, [r["source"] == "tweets" for r in pool])
    assert data.is_target.sum() == config.pool_targets >= 2 * config.n
    assert {r["source"] for r in val + test} == {"tweets"}
    lengths = [len(tokenizer(r["text"], add_special_tokens=False)["input_ids"])
               for r in pool + val + test]
    assert config.min_tokens <= min(lengths) and max(lengths) <= config.max_tokens
    assert config.max_tokens <= config.max_length  # no row is cut
    texts = [r["text"] for r in pool + val + test if r["is_target"]]
    assert len(set(texts)) == len(texts)


def test_split_refuses_a_pool_without_2n_target_rows():
    with pytest.raises(ValueError, match="needs at least 2n"):
        demo.prepare_data(demo.SMALL.replace(n=4))


def test_draws_are_seeded_and_the_oracle_draws_target_rows(split):
    oracle = demo.draw_oracle(split, 3, seed=5)
    assert split.is_target[oracle].all() and np.unique(oracle).size == 3
    random = demo.draw_random(split, 10, seed=5)
    assert np.unique(random).size == 10 and random.max() < len(split.pool)
    np.testing.assert_array_equal(random, demo.draw_random(split, 10, seed=5))
    assert not np.array_equal(random, demo.draw_random(split, 10, seed=6))


def test_unknown_topic_exits_2(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown topic 'Astrology'"):
        demo.prepare_data(demo.TOPIC.replace(target="Astrology"))
    assert cli.main(["demo", "--small", "--topic", "Astrology", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown topic 'Astrology'" in err and "Mathematics, People" in err
    assert "np.str_" not in err


def test_gate_decision_picks_the_budget_on_the_oracle_plateau():
    # mean oracle loss 3.0 -> 2.5 -> 2.46 -> 2.45 from a base loss of 3.2: the bound is
    # 2.45 + 0.02 x (3.2 - 2.45) = 2.465; 2.46 is within it, 2.5 is not
    oracle = {1: [3.0, 3.1, 2.9], 2: [2.5, 2.6, 2.4], 3: [2.46, 2.47, 2.45],
              4: [2.45, 2.46, 2.44]}
    random = {e: [v + d for v, d in zip(vals, (0.12, 0.13, 0.11), strict=True)]
              for e, vals in oracle.items()}
    decision = demo.gate_decision({"oracle": oracle, "random": random}, 3.2)
    assert decision["budget_epochs"] == 3
    # a base loss farther from the curve widens the bound: 2.45 + 0.02 x 2.75 = 2.505
    assert demo.gate_decision({"oracle": oracle, "random": random}, 5.2)["budget_epochs"] == 2
    chosen = decision["by_budget"][3]
    gains = [100 * (r - o) / r for r, o in zip(random[3], oracle[3], strict=True)]
    assert chosen["oracle_gain_pct"] == pytest.approx(np.mean(gains))
    assert chosen["se_pct"] == pytest.approx(np.std(gains, ddof=1) / np.sqrt(3))
    assert decision["passed"] == (np.mean(gains) >= 3 and chosen["t"] >= 4)
    assert decision["passed"]
    assert decision["oracle_curve"][2] == pytest.approx(2.5)
    same = demo.gate_decision({"oracle": oracle, "random": oracle}, 3.2)
    assert not same["passed"]
    partial = demo.gate_decision({"oracle": oracle, "random": {3: random[3]}}, 3.2)
    assert set(partial["by_budget"]) == {3} and partial["passed"]
    with pytest.raises(ValueError, match="not tested at the chosen budget of 3"):
        demo.gate_decision({"oracle": oracle, "random": {1: random[1]}}, 3.2)


def _fake_result(scores, lengths, n, base, seed=0):
    """A ToVResult stand-in holding what tov_parts reads."""
    rows = select_indices(scores, lengths, n, num_bins=demo.tov_bins(n), random_fraction=0.5,
                          random_pool=base, seed=seed)
    result = SimpleNamespace(
        selected=datasets.Dataset.from_dict({ROW: rows}),
        scores=datasets.Dataset.from_dict({ROW: np.arange(scores.size), report.SCORE: scores,
                                           report.NUM_TOKENS: lengths}),
    )
    return result, rows


def test_tov_parts_recovers_the_scored_half():
    rng = np.random.default_rng(3)
    num_rows, n = 60, 10  # 5 scored rows over tov_bins(10) = 5 bins: one per bin
    scores = rng.normal(size=num_rows).astype(np.float32)
    lengths = rng.permutation(np.arange(20, 20 + num_rows)).astype(np.int64)  # distinct
    base = np.sort(rng.choice(num_rows, 30, replace=False))
    result, rows = _fake_result(scores, lengths, n, base)
    parts = demo.tov_parts(result, n)
    # reference: rows by length cut into 5 equal bins, the best score of each
    by_length = np.argsort(lengths)
    expected = sorted(int(b[np.argmax(scores[b])]) for b in np.split(by_length, 5))
    assert sorted(parts["scored half"].tolist()) == expected
    assert sorted(np.concatenate(list(parts.values())).tolist()) == sorted(rows.tolist())
    assert np.isin(parts["random half"], base).all() and parts["random half"].size == 5


def test_tov_parts_prefers_the_from_score_column():
    result, rows = _fake_result(np.arange(40, dtype=np.float32), np.full(40, 7), 4,
                                np.arange(40))
    flags = np.zeros(rows.size, dtype=bool)
    flags[0] = True
    result.selected = result.selected.add_column("tov_from_score", flags.tolist())
    parts = demo.tov_parts(result, 4)
    assert parts["scored half"].tolist() == [rows[0]]
    assert parts["random half"].tolist() == rows[1:].tolist()


def test_tov_bins_keeps_a_scored_row_per_bin():
    assert demo.tov_bins(10) == 5 and demo.tov_bins(40) == 10 and demo.tov_bins(1) == 1


class _Bar:
    def __init__(self, total, desc, log):
        self.total, self.desc, self.log, self.postfix = total, desc, log, None
        log.append(self)

    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def close(self):
        pass


def test_demo_eta_extrapolates_the_remaining_work(monkeypatch):
    clock = iter([100.0, 130.0])  # the first bar opens at 100 s, the update comes at 130 s
    monkeypatch.setattr(demo.time, "perf_counter", lambda: next(clock))
    bars = []
    eta = demo.DemoEta(lambda total, desc: _Bar(total, desc, bars),
                       {"train tov_base": 40.0}, total=160.0)
    bar = eta(total=4, desc="train tov_base")
    bar.update(2)  # half of the bar = 20 units of 160 in 30 s: 140 units left, 210 s
    assert eta.done == pytest.approx(20.0)
    assert bars[0].postfix == "demo ETA 3:30" and bars[0].desc == "train tov_base"


def test_choose_threads_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    for load, threads in ((0.1, 2), (0.9, 1), (4.0, 1)):
        monkeypatch.setattr(demo.os, "getloadavg", lambda load=load: (load, load, load))
        assert demo.choose_threads() == threads


def _outcome(random, tov, oracle):
    losses = {demo.BASE_MODEL: np.full(4, 3.0), "random": np.asarray(random),
              "ToV": np.asarray(tov), "oracle": np.asarray(oracle)}
    return demo.Outcome(
        losses=losses,
        gains={k: evaluation.paired_gain(losses[k], losses["random"]) for k in ("ToV", "oracle")},
        capture=evaluation.oracle_capture(random, tov, oracle, num_bootstrap=200),
        auc=0.8, precision={5: 0.6}, roc=(np.r_[0.0, 1.0], np.r_[0.0, 1.0]))


def test_verdict_states_gain_capture_and_error_bar():
    random, tov, oracle = [2.0, 2.2, 2.1, 2.3], [1.9, 2.1, 2.0, 2.2], [1.8, 2.0, 1.9, 2.1]
    text = demo.verdict(_outcome(random, tov, oracle))
    gain = np.mean([100 * (r - t) / r for r, t in zip(random, tov, strict=True)])
    assert text.startswith(f"ToV's pick lowered the target loss {gain:.1f}% more than random")
    assert "50% (90% interval" in text and "more than its error bar" in text
    worse = demo.verdict(_outcome(random, [2.05, 2.2, 2.12, 2.3], oracle))
    assert worse.startswith("ToV's pick did worse than random") and "within" in worse
    no_oracle = demo.verdict(_outcome(random, tov, [2.1, 2.3, 2.2, 2.4]))
    assert "did not beat random" in no_oracle and "nan" not in no_oracle


def test_plan_work_counts_every_bar_of_the_demo():
    sample = type("S", (), {})
    pool = [sample() for _ in range(10)]
    for i, s in enumerate(pool):
        s.input_ids = [0] * (i + 1)  # 55 tokens, 5.5 per row
    test = [sample() for _ in range(2)]
    for s in test:
        s.input_ids = [0] * 4
    encoded = demo.Encoded(pool=pool, test=test, pad_token_id=0)
    config = demo.SMALL.replace(base_size=4, n=2, epochs=2, finetune_epochs=3)
    work, total = demo.plan_work(encoded, val_tokens=6, config=config)
    assert work["train tov_base"] == 3 * 4 * 5.5 and work["train tov_val"] == 18
    assert work["score epoch 2"] == 110 and work["test ToV"] == 8
    assert work["fine-tune oracle"] == 3 * 2 * 5.5
    per_epoch = 66 + 18 + 110
    assert total == pytest.approx(2 * per_epoch + 8 + 3 * (3 * 33 + 8))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One `tov demo --small`, with a progress factory that records every bar."""
    out = tmp_path_factory.mktemp("demo") / "small"
    bars = []
    captured = {}
    original = cli.progress_factory
    cli.progress_factory = lambda quiet: (lambda *, total, desc: _Bar(total, desc, bars))
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            captured["code"] = cli.main(["demo", "--small", "--out", str(out)])
    finally:
        cli.progress_factory = original
    return out, stdout.getvalue(), bars, captured["code"]


@pytest.mark.slow
def test_small_demo_writes_every_stage_output(small_run, tokenizer):
    out, printed, bars, code = small_run
    assert code == 0
    for text in ("| random |", "| ToV |", "| oracle |", "| pool |", "ToV, scored half",
                 "ToV, random half", "base model", "LoRA on ToV pick", "LoRA on oracle pick",
                 "ROC AUC", "precision@", "counted, not measured", "ToV scoring",
                 "fine-tune + test, oracle", "total", "Premise check", "torch thread",
                 "target tweets (WNUT-16) among Wikipedia and BBC News text"):
        assert text in printed, text
    assert "ToV's pick " in printed and "of what training on target rows" in printed \
        or "did not beat random" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "demo" and run["arguments"] == dataclasses.asdict(demo.SMALL)
    assert set(run["losses"]) == {demo.BASE_MODEL, "random", "ToV", "oracle"}
    assert all(np.isfinite(v) for v in run["losses"].values())
    for name, rows in run["test_row_losses"].items():
        assert len(rows) == demo.SMALL.test_size
        assert np.mean(rows) == pytest.approx(run["losses"][name])
    assert run["losses"]["random"] < run["losses"][demo.BASE_MODEL]
    assert sorted(run["tov_parts"]["scored half"] + run["tov_parts"]["random half"]) \
        == run["selections"]["ToV"]
    assert set(run["gains"]) == {"ToV", "oracle"} and 0 <= run["roc_auc"] <= 1
    text = (out / report.REPORT_NAME).read_text()
    for heading in ("Verdict", "Premise", "Target share of each pick", "Target test loss",
                    "Ranking quality of the raw score", "Cost of the selection",
                    "Time per stage (s)"):
        assert f"## {heading}" in text, heading
    for name in [*report.PLOTS.values(), *demo.PLOTS.values()]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in text, name
    # the pool's composition by source, and the same pool as the data split
    data = demo.prepare_data(demo.SMALL, tokenizer)
    assert "source" in text and "| tweets |" in text
    assert run["counts"]["target rows in the pool"] == int(data.is_target.sum())
    tov = np.asarray(run["selections"]["ToV"])
    shares = {part: int(data.is_target[rows].sum()) for part, rows in run["tov_parts"].items()}
    assert f"| ToV | {tov.size} | {int(data.is_target[tov].sum())} |" in printed
    assert f"| ToV, scored half | {len(run['tov_parts']['scored half'])} | " \
        f"{shares['scored half']} |" in printed
    # every progress bar the demo opens is in its plan (the whole-demo ETA counts it)
    encoded = demo.encode(tokenizer, data, demo.SMALL)
    work, _ = demo.plan_work(encoded, 1, demo.SMALL)
    opened = {bar.desc for bar in bars}
    assert opened <= set(work), opened - set(work)
    assert any(bar.postfix and bar.postfix.startswith("demo ETA") for bar in bars)


@pytest.mark.slow
def test_small_gate_writes_its_record(tmp_path, capsys):
    gate = demo.run_gate(demo.SMALL, tmp_path, threads=1, seeds=(0, 1), eval_at=(1, 2))
    record = json.loads((tmp_path / demo.GATE_NAME).read_text())
    assert record["budget_epochs"] in (1, 2) and isinstance(record["passed"], bool)
    assert set(record["by_budget"]) == {"1", "2"} and record["seeds"] == [0, 1]
    for name in ("oracle", "random"):
        assert all(len(v) == 2 for v in gate["curves"][name].values())
    assert record["target_rows"]["oracle"] == [demo.SMALL.n] * 2
    printed = capsys.readouterr().out
    assert "premise gate" in printed and ("PASSED" in printed or "FAILED" in printed)


@pytest.mark.slow
def test_small_topic_demo_runs_on_the_summaries(tmp_path, capsys):
    assert cli.main(["demo", "--small", "--topic", "Mathematics", "--quiet",
                     "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "target Wikipedia topic 'Mathematics' among the other topics" in printed
    assert "| rows of | rows | Mathematics | share | vs pool |" in printed
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["arguments"] == dataclasses.asdict(TOPIC_SMALL)
    data = demo.prepare_data(TOPIC_SMALL)
    oracle = np.asarray(run["selections"]["oracle"])
    assert data.is_target[oracle].all() and oracle.size == TOPIC_SMALL.n
    assert "## Composition by `topic`" in (tmp_path / report.REPORT_NAME).read_text()
