"""benchmarks/pick_answers.py: what a labelled-chat pick teaches, against hand counts."""

import json

import numpy as np
import pytest

from benchmarks import pick_answers, quality
from benchmarks.fidelity import spearman


def _chat(answer: str) -> dict:
    return {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": f" {answer}\n"}]}


def test_answers_are_the_last_assistant_message_stripped():
    rows = {"messages": [_chat("sport")["messages"],
                         [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
                          {"role": "assistant", "content": " tech "}]]}
    assert quality.answers(rows).tolist() == ["sport", "tech"]


def test_pick_measures_against_hand_counts():
    # pool: 0-2 target rows (their own label), 3-4 conflicting (a label word, wrong mapping),
    # 5-6 other rows (answers outside the test's words)
    answer = np.array(["a", "b", "a", "b", "c", "x", "y"])
    is_target = np.array([True, True, True, False, False, False, False])
    test = np.array(["a", "a", "b", "c"])  # test asks a 1/2, b 1/4, c 1/4
    m = pick_answers.pick_measures(answer, is_target, np.array([0, 2, 3, 5]), test)
    # label rows 0, 2, 3 (answers a, a, b); 2 of 3 are target rows; row 5 is not a label row
    assert m["label_share"] == 0.75 and m["correct_share"] == pytest.approx(2 / 3)
    assert m["answers"] == {"a": 2, "b": 1, "c": 0}
    # taught (2/3, 1/3, 0) vs asked (1/2, 1/4, 1/4): TV = (1/6 + 1/12 + 1/4) / 2
    assert m["label_tv"] == pytest.approx(0.25)
    assert m["target_labels"] == 1
    none = pick_answers.pick_measures(answer, is_target, np.array([5, 6]), test)
    assert none["label_share"] == 0.0 and np.isnan(none["correct_share"])
    assert none["label_tv"] == 1.0 and none["target_labels"] == 0


def test_score_by_label_means_per_word_and_kind():
    scores = np.array([1.0, 3.0, 5.0, -1.0, 2.0])
    answer = np.array(["a", "a", "b", "a", "z"])
    is_target = np.array([True, True, True, False, False])
    got = pick_answers.score_by_label(scores, answer, is_target, np.array(["a", "b"]))
    assert got == {"target": {"a": 2.0, "b": 5.0}, "other": {"a": -1.0}}


def test_associations_pair_gains_by_seed_and_skip_missing_measures():
    def rec(seed, method, loss, tv, correct):
        return {"seed": seed, "method": method, "test_loss": loss, "label_share": 1.0,
                "correct_share": correct, "label_tv": tv, "target_labels": 2}

    records = [rec(0, "random", 2.0, 0.5, 0.4), rec(0, "oracle", 0.1, 0.0, 1.0),
               rec(0, "m", 1.0, 0.1, np.nan), rec(1, "random", 1.0, 0.4, 0.5),
               rec(1, "m", 1.5, 0.9, 0.2), rec(1, "k", 0.5, 0.2, 0.9)]
    got = pick_answers.associations(records)
    assert got["picks"] == 5  # the oracle is left out
    gains = [0.0, 50.0, 0.0, -50.0, 50.0]  # random, m, random, m, k (% of random's loss)
    assert got["spearman_with_gain"]["label_tv"] == pytest.approx(
        spearman([0.5, 0.1, 0.4, 0.9, 0.2], gains))
    # m's seed-0 NaN is left out of both the correlation and m's mean
    assert got["spearman_with_gain"]["correct_share"] == pytest.approx(
        spearman([0.4, 0.5, 0.2, 0.9], [0.0, 0.0, -50.0, 50.0]))
    assert got["by_method"]["m"]["correct_share"] == 0.2
    assert got["by_method"]["m"]["label_tv"] == pytest.approx(0.5)


def _refuse(*args, **kwargs):
    raise AssertionError("picks stored with their rows must not be recomputed")


def test_tiny_run_recomputes_and_checks_the_stored_picks(tmp_path, monkeypatch):
    path = quality.main(["--config", "chat_labels", "--tiny", "--threads", "1", "--force",
                         "--methods", "tov,embedding", "--out-dir", str(tmp_path)])
    record = json.loads(path.read_text())
    rows = {(r["seed"], r["method"]): r.pop("idx") for r in record["details"]["per_seed"]}
    path.write_text(json.dumps(record))  # a result from before the picks' rows were stored
    out = tmp_path / "pick_answers.json"
    args = ["--config", "chat_labels", "--size", "tiny", "--quality", str(path), "--out",
            str(out)]
    pick_answers.main(args)
    picks = json.loads(out.read_text())["details"]["picks"]
    stored, budget = pick_answers.stored_picks(path)
    assert set(budget) >= {"epochs", "lr"}
    assert {(r["seed"], r["method"]) for r in picks} == set(stored)
    for r in picks:  # the recomputed picks are the rows the quality run stored
        assert sorted(r["idx"]) == sorted(rows[(r["seed"], r["method"])])
        assert len(r["idx"]) == stored[(r["seed"], r["method"])]["n"]
    scored = {r["method"] for r in picks if "score_by_label" in r}
    assert scored == {"tov", "tov_score_only", "tov_nobins", "embedding"}
    merged = tmp_path / "merged.json"
    pick_answers.main([*args[:6], "--merge", str(out), str(out), "--out", str(merged)])
    assert json.loads(merged.read_text())["details"]["picks"] == picks  # one per pick
    # the stored rows, where the result holds them, are read without selecting again
    with_rows = tmp_path / "with_rows.json"
    for r in record["details"]["per_seed"]:
        r["idx"] = rows[(r["seed"], r["method"])]
    with_rows.write_text(json.dumps(record))
    for r in record["details"]["per_seed"]:
        del r["idx"]
    read = tmp_path / "read.json"
    with monkeypatch.context() as m:
        m.setattr(quality, "run_selector", _refuse)
        pick_answers.main([*args[:4], "--quality", str(with_rows), "--out", str(read)])
    got = {(r["seed"], r["method"]): r for r in json.loads(read.read_text())["details"]["picks"]}
    for r in picks:
        mine = got[(r["seed"], r["method"])]
        assert "score_by_label" not in mine  # the raw scores are not stored
        assert [mine[k] for k in pick_answers.MEASURES] == pytest.approx(
            [r[k] for k in pick_answers.MEASURES], nan_ok=True)
    # two files holding one pick with different rows are refused
    other = json.loads(out.read_text())
    other["details"]["picks"][0]["idx"] = other["details"]["picks"][0]["idx"][::-1][1:]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different rows"):
        pick_answers.main([*args[:6], "--merge", str(out), str(tmp_path / "other.json"),
                           "--out", str(merged)])
    # a stored pick that differs from the recomputed one stops the run
    record["details"]["per_seed"][0]["source_shares"] = {"target": 1.0}
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="differ from the stored"):
        pick_answers.main(args)
    # an older result without source shares is checked on its target share
    for r in record["details"]["per_seed"]:
        r["source_shares"] = None
    path.write_text(json.dumps(record))
    pick_answers.main(args)
    record["details"]["per_seed"][0]["target_share"] += 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="differ from the stored"):
        pick_answers.main(args)


def test_word_quotas_follow_shares_within_what_the_pool_holds():
    shares = np.array([0.5, 0.3, 0.2])
    assert pick_answers.word_quotas(shares, 10, np.array([9, 9, 9])).tolist() == [5, 3, 2]
    # largest remainder: 7 x (0.5, 0.3, 0.2) = (3.5, 2.1, 1.4) -> 3 + 1, 2, 1
    assert pick_answers.word_quotas(shares, 7, np.array([9, 9, 9])).tolist() == [4, 2, 1]
    # word 0 holds 2 rows: its 3 missing go to the words furthest below their share
    assert pick_answers.word_quotas(shares, 10, np.array([2, 9, 9])).tolist() == [2, 5, 3]
    with pytest.raises(ValueError, match="rows for a pick of"):
        pick_answers.word_quotas(shares, 10, np.array([2, 2, 2]))


def test_control_picks_draw_by_answer_word():
    rng = np.random.default_rng(0)
    words = np.array(list("abcde"))
    answer = np.concatenate([np.repeat(words, 12), np.repeat(words, 12), ["x"] * 40])
    is_target = np.r_[np.ones(60, bool), np.zeros(100, bool)]  # 60 conflicting, 40 other
    test = rng.permutation(np.repeat(words, 8))  # every word 1/5 of the test
    picks = pick_answers.control_picks(answer, is_target, test, 30, seed=3)
    assert set(picks) == {"balanced", "skewed", "half_conflicting"}
    for arm, idx in picks.items():
        assert idx.size == 30 and np.unique(idx).size == 30 and np.all(np.diff(idx) > 0)
        assert np.isin(answer[idx], words).all(), arm
    assert is_target[picks["balanced"]].all() and is_target[picks["skewed"]].all()
    assert is_target[picks["half_conflicting"]].sum() == 15
    count = {arm: sorted(np.unique(answer[idx], return_counts=True)[1].tolist())
             for arm, idx in picks.items()}
    assert count["balanced"] == [6] * 5 and count["half_conflicting"] == [6] * 5
    assert count["skewed"] == [2, 2, 2, 12, 12]  # two words 40% of 30 each, 6 rows for 3
    m = pick_answers.pick_measures(answer, is_target, picks["skewed"], test)
    assert m["label_tv"] == pytest.approx(0.4)  # 2 x (0.4 - 0.2)
    again = pick_answers.control_picks(answer, is_target, test, 30, seed=3)
    assert all(np.array_equal(again[k], picks[k]) for k in picks)


def test_tiny_controls_refit_the_oracle_and_pair_with_random(tmp_path, monkeypatch):
    path = quality.main(["--config", "chat_labels", "--tiny", "--threads", "1", "--out-dir",
                         str(tmp_path)])

    def labels(rows):  # tiny chats' answers are random words: give every row a label word
        return np.array(["a", "b", "c"] * len(rows))[: len(rows)]

    monkeypatch.setattr(quality, "answers", labels)
    out = pick_answers.main(["--config", "chat_labels", "--size", "tiny", "--controls",
                             "--quality", str(path), "--out", str(tmp_path / "c.json")])
    record = json.loads(out.read_text())
    stored, _ = pick_answers.stored_picks(path)
    summary, picks = record["summary"], record["details"]["picks"]
    assert {r["method"] for r in picks} == {"balanced", "skewed", "half_conflicting"}
    for arm in ("balanced", "skewed", "half_conflicting"):
        mine = sorted((r["seed"], r["test_loss"]) for r in picks if r["method"] == arm)
        gains = [100 * (stored[(sd, "random")]["test_loss"] - loss)
                 / stored[(sd, "random")]["test_loss"] for sd, loss in mine]
        assert summary[arm]["improvement_pct_by_seed"] == pytest.approx(gains)
    d = summary["skewed_minus_balanced"]
    assert d["seeds"] == 2 and d["mean_pp"] == pytest.approx(np.mean(
        np.subtract(summary["skewed"]["improvement_pct_by_seed"],
                    summary["balanced"]["improvement_pct_by_seed"])))
    # a stored oracle loss the fine-tune does not reproduce stops the run
    data = json.loads(path.read_text())
    for r in data["details"]["per_seed"]:
        if r["method"] == "oracle":
            r["test_loss"] += 0.01
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="fine-tuned again"):
        pick_answers.main(["--config", "chat_labels", "--size", "tiny", "--controls",
                           "--quality", str(path), "--out", str(tmp_path / "d.json")])


def test_word_effect_separates_a_word_score_from_a_mapping_score():
    def rec(method, target, other):
        return {"method": method, "score_by_label": {"target": target, "other": other}}

    words = {"a": 1.0, "b": 0.0, "c": 0.5}
    records = [rec("word", words, dict(words)),  # the answer word alone sets the score
               rec("mapping", {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 0.0, "b": 0.2, "c": -0.2}),
               {"method": "random"}]
    got = pick_answers.word_effect(records)
    assert set(got) == {"word", "mapping"}
    assert got["word"]["word_spread"] == 1.0 and got["word"]["mapping_gap"] == 0.0
    assert got["word"]["word_corr"] == pytest.approx(1.0)
    assert got["mapping"]["word_spread"] == 0.0 and got["mapping"]["mapping_gap"] == 1.0
    assert np.isnan(got["mapping"]["word_corr"])  # constant target means: no correlation
