"""benchmarks/quality.py: the budget rule, the premise gate, and a tiny end-to-end run of
every method and metric (tiny random models: seconds, not a quality claim)."""

import dataclasses
import json
import math

import numpy as np
import pytest

from benchmarks import eval_data, quality
from benchmarks.quality_configs import CONFIGS, coarse_tag
from tov_datasets import trajectory


def _refuse(*args, **kwargs):
    raise AssertionError("a resumed or --summarise-only run must not select again")


def test_gate_passes_only_with_a_clear_oracle_gain_and_a_learned_task():
    random = [1.00, 1.02, 0.98]
    oracle = [0.90, 0.93, 0.88]  # ~9.6% better, tight: t >> 4
    g = quality.gate_result({"random": random, "oracle": oracle}, [1.2, 1.2, 1.2], None)
    assert g["gate_passed"] and g["random_learned"]
    assert g["oracle_improvement_pct"] == pytest.approx(
        np.mean([100 * (r - o) / r for r, o in zip(random, oracle, strict=True)]))
    # the same gain, but random did not learn (zero-shot barely above it)
    assert not quality.gate_result({"random": random, "oracle": oracle}, [1.01] * 3,
                                   None)["gate_passed"]
    # token classification: bound is 0.6 x label entropy
    g = quality.gate_result({"random": random, "oracle": oracle}, [2.0] * 3, [1.0] * 3)
    assert not g["random_learned"] and g["learned_bound"] == pytest.approx(0.6)
    # a noisy oracle gain (t < 4) fails
    noisy = [0.90, 1.03, 0.85]
    assert not quality.gate_result({"random": random, "oracle": noisy}, [1.2] * 3,
                                   None)["gate_passed"]


def test_label_entropy_matches_hand_computation():
    from datasets import Dataset

    test = Dataset.from_list([{"ner_tags": ["O", "O", "B-PER"]}, {"ner_tags": ["O"]}])
    p = np.array([0.75, 0.25])
    assert quality.label_entropy(test) == pytest.approx(float(-(p * np.log(p)).sum()))


def test_config_helpers():
    assert coarse_tag("B-geo-loc") == "B-LOC" and coarse_tag("I-sportsteam") == "I-ORG"
    assert coarse_tag("O") == "O" and coarse_tag("B-tvshow") == "B-MISC"
    for cfg in CONFIGS.values():  # every size keeps >= 2n target rows for the oracle
        for sz in cfg.sizes.values():
            in_pool = sz.data.get("wnut_in_pool", sz.data.get("target_in_pool"))
            assert in_pool >= 2 * sz.n and sz.base_size >= 2 * sz.n


def test_less_gradient_micro_batches_keep_every_stored_runs_size():
    sizes = {name: CONFIGS[name].sizes["full"].max_length
             for name in ("ner_coarse_v3", "lm_tweets_v3", "chat_labels_v2", "chat_long_v3")}
    batch = {name: quality.less_grad_batch_size(length) for name, length in sizes.items()}
    # the configurations LESS ran on keep 8 rows; chat_long_v3's 352 tokens get 3
    assert batch == {"ner_coarse_v3": 8, "lm_tweets_v3": 8, "chat_labels_v2": 8,
                     "chat_long_v3": 3}
    assert quality.less_grad_batch_size(100_000) == 1


def test_run_seeds_start_at_first_seed():
    v3, v4 = (CONFIGS[c].sizes["full"] for c in ("ner_coarse_v3", "ner_coarse_v4"))
    assert v3.seed_list() == [0, 1, 2] and v4.seed_list() == [3, 4, 5, 6, 7]
    assert v4.seed_list(2) == [3, 4] and quality.TINY_SIZES.seed_list() == [0, 1]


def test_ner_coarse_silver_sentences_follow_silver_seed(monkeypatch):
    """The silver articles come from ``silver_seed``'s draw; the WNUT split from the run seed."""
    asked = []

    def fake_silver(num_texts, seed):
        asked.append((num_texts, seed))
        return [{"tokens": ["Paris", f"s{i}"], "ner_tags": ["B-geo-loc", "O"],
                 "source": "wiki" if i % 2 else "bbc"} for i in range(400)]

    monkeypatch.setattr(eval_data, "silver_sentences", fake_silver)
    sizes = CONFIGS["ner_coarse_v4"].sizes["small"]
    a, b = (CONFIGS["ner_coarse_v4"].build(seed, **sizes.data) for seed in sizes.seed_list())
    assert asked == [(3000, 1), (3000, 1)]
    for d in (a, b):
        assert d["meta"]["pool"] == 300 and d["meta"]["pool_target"] == 60
        silver = [r for r in d["pool"] if not r["is_target"]]
        assert len(silver) == 240 and all(r["ner_tags"] == ["B-LOC", "O"] for r in silver)
        assert all(r["source"] == "wnut16" for r in d["val"])
    assert a["val"]["tokens"] != b["val"]["tokens"]


@pytest.fixture
def fake_seed_runner(tmp_path, monkeypatch):
    """make(config, epochs, names, curve) -> (Runner, Progress) on a fake 4-row seed 8 (rows
    0 and 2 are target rows): every selector yields the picks ``names`` (default: the
    method's own name), the i-th of rows 0 and 1 + i % 3 (distinct picks, each fine-tuned),
    and a fine-tune for e epochs returns ``curve(e)``."""
    from types import SimpleNamespace

    fake = SimpleNamespace(seed=8, is_target=np.array([True, False, True, False]),
                           sources=None, test=None)
    monkeypatch.setattr(quality, "setup", lambda *a, **k: fake)
    monkeypatch.setattr(quality, "entity_share", lambda s, idx: None)
    monkeypatch.setattr(quality, "ranking_metrics", lambda s, scores, extra: {})

    def make(config, epochs, names, curve):
        fake.config = config
        monkeypatch.setattr(quality, "run_selector", lambda name, s: {
            m: {"idx": np.array([0, 1 + i % 3]), "scores": None, "extra": {}}
            for i, m in enumerate(names or [name])})
        monkeypatch.setattr(quality, "finetune_curve",
                            lambda s, idx, lr, epochs, held, sched: curve(epochs))
        progress = quality.Progress(tmp_path / "p.json", {"k": 1})
        runner = quality.Runner(config, "full", progress)
        runner.budget = {"lr": 3e-4, "epochs": epochs}
        return runner, progress

    return make


@pytest.mark.parametrize("eval_epochs,expected", [(1, 1.0), (3, 2.0), (5, 2.5)])
def test_test_loss_is_the_mean_of_the_budgets_last_eval_epochs(eval_epochs, expected,
                                                               fake_seed_runner):
    import dataclasses

    config = dataclasses.replace(CONFIGS["ner_coarse_v5"], eval_epochs=eval_epochs)
    runner, progress = fake_seed_runner(config, 4, None, lambda e: [4.0, 3.0, 2.0, 1.0][:e])
    runner.evaluate(8, "random")
    record = progress.get("8/random")
    assert record["test_loss"] == pytest.approx(expected)
    assert record["test_curve"] == [4.0, 3.0, 2.0, 1.0] and record["target_share"] == 0.5


def test_a_run_stopped_between_tovs_picks_fine_tunes_only_the_missing_ones(fake_seed_runner):
    names = ["tov", *quality.DERIVED]
    tuned = []

    def curve(epochs):
        tuned.append(len(tuned))
        return [float(len(tuned))] * epochs

    runner, progress = fake_seed_runner(CONFIGS["ner_coarse_v6"], 2, names, curve)
    progress.put("8/tov", {"seed": 8, "method": "tov", "test_loss": 0.5})
    runner.evaluate(8, "tov")
    assert len(tuned) == len(names) - 1 and progress.get("8/tov")["test_loss"] == 0.5
    assert all(progress.get(f"8/{m}") is not None for m in names)
    runner.evaluate(8, "tov")  # every pick saved: nothing again
    assert len(tuned) == len(names) - 1


def test_epoch_lrs_constant_or_linear_decay():
    assert quality.epoch_lrs("constant", 0.3, 3) == [0.3] * 3
    assert quality.epoch_lrs("linear", 0.3, 3) == pytest.approx([0.3, 0.2, 0.1])
    assert quality.epoch_lrs("linear", 0.3, 1) == [0.3]
    with pytest.raises(ValueError, match="ft_schedule='cosine'"):
        quality.epoch_lrs("cosine", 0.3, 3)


def test_linear_schedule_fine_tunes_a_fixed_recipe(tmp_path, monkeypatch):
    """ft_schedule="linear": nothing is calibrated, the budget is ft_max_epochs at the one lr,
    and every fine-tune's epochs run at lr, lr / 2 (two epochs), as fit is told."""
    import dataclasses
    from types import SimpleNamespace

    import tov_datasets.training as training

    linear = dataclasses.replace(CONFIGS["ner_coarse"], ft_schedule="linear")
    monkeypatch.setitem(quality.CONFIGS, "ner_coarse", linear)
    seen, fit = [], training.fit

    def recording_fit(*args, **kwargs):
        if kwargs.get("adapter") == "ft":
            seen.append(kwargs["lr"])
        return fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    path = quality.main(["--config", "ner_coarse", "--tiny", "--threads", "1", "--force",
                         "--methods", "length", "--out-dir", str(tmp_path)])
    record = json.loads(path.read_text())
    cal = record["details"]["calibration"]
    assert {k: cal[k] for k in ("schedule", "epochs", "lr")} == {
        "schedule": "linear", "epochs": 2, "lr": 1e-2}
    assert "curves" not in cal and math.isfinite(cal["zero_shot"])
    assert record["summary"]["finetune_schedule"] == "linear"
    fine_tunes = 2 * 3  # seeds x (random, oracle, length)
    assert seen == pytest.approx([1e-2, 5e-3] * fine_tunes)
    assert all(len(r["test_curve"]) == 2 for r in record["details"]["per_seed"])
    assert "(linear decay)" in path.with_suffix(".md").read_text()
    two_lrs = SimpleNamespace(config=linear, sizes=dataclasses.replace(
        quality.TINY_SIZES, ft_lrs=(1e-2, 1e-3)))
    with pytest.raises(ValueError, match="takes one lr"):
        quality.calibrate(two_lrs)


def test_budget_is_the_smallest_within_two_percent_of_the_attainable_gain():
    curves = {"0.001": [2.0, 1.5, 1.21, 1.2, 1.25], "0.003": [1.6, 1.30, 1.206, 1.4, 1.5]}
    b = quality.choose_budget(curves, reference=2.2)
    assert b["plateau"] == 1.2 and b["bound"] == pytest.approx(1.22)
    # epoch 3 is within the bound at both lrs; the lower loss (0.003: 1.206) wins the tie
    assert (b["epochs"], b["lr"]) == (3, 0.003)
    # a zero-shot loss close to the minimum widens nothing: the bound stays near the minimum
    assert quality.choose_budget({"0.1": [1.3, 1.21, 1.2]}, reference=1.25)["epochs"] == 3
    # a reference below every loss (a model that never reached the label prior): the minimum
    assert quality.choose_budget({"0.1": [1.3, 1.21, 1.2]}, reference=0.5)["epochs"] == 3


@pytest.mark.parametrize("config,extra", [("ner_coarse", ["less_auc", "label_prior_auc",
                                                         "label_prior_score_random_auc"]),
                                          ("lm_tweets", [])])
def test_quality_tiny_end_to_end(config, extra, tmp_path, monkeypatch):
    path = quality.main(["--config", config, "--tiny", "--threads", "1", "--force",
                         "--out-dir", str(tmp_path)])
    assert path.name == f"quality_{config}_tiny.json"
    record = json.loads(path.read_text())
    s = record["summary"]
    for k in ("task", "config_commit", "seeds", "gate_passed", "oracle_improvement_pct",
              "oracle_t", "random_learned", "best_tov_variant", "best_tov_oracle_capture"):
        assert k in s, k
    stats = record["details"]["stats"]
    oracle_wins = stats["oracle"]["test_loss"] < stats["random"]["test_loss"]
    methods = ["tov", "tov_score_only", "tov_nobins", "maxunc", "embedding", "length"]
    for m in methods:
        for k in ("improvement_pct", "improvement_se_pct", "target_share"):
            assert math.isfinite(s[f"{m}_{k}"]), (m, k)
        # capture is defined only where the oracle beats random (tiny models may not)
        assert math.isfinite(s[f"{m}_oracle_capture"]) == oracle_wins
        assert 0.0 <= s[f"{m}_auc"] <= 1.0 and 0.0 <= s[f"{m}_precision_at_n"] <= 1.0
    for k in extra:
        assert 0.0 <= s[k] <= 1.0
    assert stats["oracle"]["target_share"] == 1.0
    if config == "ner_coarse":  # the label prior takes the rows densest in entity tags
        assert 0.0 <= stats["random"]["entity_share"] <= stats["label_prior"]["entity_share"]
    else:
        assert "entity_share" not in stats["random"]
    assert len(stats["tov"]["auc_per_epoch"]) == 1 and "auc_outside_u" in stats["tov"]
    # the derived selections reuse ToV's scores: same AUC, own picks
    assert stats["tov_score_only"]["auc"] == stats["tov"]["auc"]
    # per source: the pick's shares sum to one, the target source's share is target_share
    for m in ("tov", "embedding"):
        shares = stats[m]["source_shares"]
        assert sum(shares.values()) == pytest.approx(1.0)
        assert shares["target"] == pytest.approx(stats[m]["target_share"])
        assert all(0.0 <= a <= 1.0 for a in stats[m]["auc_vs_source"].values())
    # the budget is measured from the label entropy (token classification) or zero-shot loss
    cal = record["details"]["calibration"]
    val = quality.setup(CONFIGS[config], "tiny", 0).val
    reference = quality.label_entropy(val) if config == "ner_coarse" else cal["zero_shot"]
    assert cal["reference"] == pytest.approx(reference)
    assert cal["bound"] == pytest.approx(cal["plateau"] + quality.BUDGET_TOLERANCE
                                         * max(reference - cal["plateau"], 0.0))
    assert path.with_suffix(".md").is_file()
    # a rerun resumes from the progress file: nothing is recomputed, same numbers
    monkeypatch.setattr(quality, "run_selector", _refuse)
    again = quality.main(["--config", config, "--tiny", "--threads", "1", "--force",
                          "--out-dir", str(tmp_path)])
    assert json.loads(again.read_text())["details"]["stats"] == stats


def test_entity_share_is_the_mean_share_of_entity_words_over_the_pick():
    s = quality.setup(CONFIGS["ner_coarse"], "tiny", 0)
    id2label = s.model.config.id2label
    words = [[t if isinstance(t, str) else id2label[int(t)] for t in row]
             for row in s.pool["ner_tags"]]
    idx = np.array([0, 3, 5, len(words) - 1])
    want = np.mean([sum(t != "O" for t in words[i]) / len(words[i]) for i in idx])
    assert want > 0
    assert quality.entity_share(s, idx) == pytest.approx(want, abs=1e-12)


def test_score_random_picks_a_baseline_score_in_tovs_shape():
    """``label_prior_score_random`` differs from ToV's pick in the score alone: the same
    scored-token counts (length bins), base set U (random half) and seed as ToV's run."""
    from benchmarks.baselines import label_prior, length
    from tov_datasets.select import select_indices
    from tov_datasets.trajectory import draw_base_set

    s = quality.setup(CONFIGS["ner_coarse"], "tiny", 1)
    got = quality.run_selector("label_prior_score_random", s)["label_prior_score_random"]
    prior = label_prior.scores(s.model, s.tokenizer, s.pool, s.val)
    assert np.array_equal(got["scores"], prior) and prior.max() > prior.min()
    r = quality.tov_result(s, "tov")
    table = r.scores.data
    order = np.argsort(table.column("tov_row").to_numpy())
    counts = np.asarray(table.column("tov_num_tokens").to_numpy())[order]
    assert np.array_equal(length.scored_lengths(s.model, s.tokenizer, s.pool,
                                                s.sizes.max_length), counts)
    assert np.array_equal(draw_base_set(len(s.pool), s.sizes.base_size, s.seed),
                          r.base_indices)
    want = select_indices(prior.astype(np.float32), counts, s.sizes.n,
                          random_pool=r.base_indices, seed=s.seed)
    assert np.array_equal(got["idx"], np.sort(want))
    assert len(np.unique(got["idx"])) == s.sizes.n


def test_seeds_split_over_processes_then_summarised(tmp_path, monkeypatch):
    """Two processes run the controls of one seed each (--method-seeds, own copies of the
    progress file); the gate waits for every seed's controls; once the files are merged, the
    methods run on some seeds and --summarise-only pairs each method with the controls over
    the seeds it finished."""
    args = ["--config", "lm_tweets", "--tiny", "--threads", "1", "--force", "--methods",
            "length"]
    files = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        with pytest.raises(SystemExit, match="controls of every seed"):
            quality.main([*args, "--method-seeds", str(seed), "--out-dir", str(out)])
        files[seed] = out / ".quality_lm_tweets_tiny.progress.json"
    first = json.loads(files[0].read_text())
    assert {"0/random", "0/oracle"} <= set(first["done"]) and "1/random" not in first["done"]
    out = str(tmp_path / "seed0")
    # seed 1's controls merged in, the gate runs; methods on seed 0 only (none on seed 1 yet)
    quality.main([*args, "--method-seeds", "0", "--out-dir", out,
                  "--merge-progress", str(files[1])])
    assert "1/oracle" in json.loads(files[0].read_text())["done"]
    monkeypatch.setattr(quality, "run_selector", _refuse)
    path = quality.main([*args, "--summarise-only", "--out-dir", out])
    stats = json.loads(path.read_text())["details"]["stats"]
    assert stats["length"]["seeds"] == [0] and stats["random"]["seeds"] == [0, 1]
    done = json.loads(files[0].read_text())["done"]
    r, m = done["0/random"]["test_loss"], done["0/length"]["test_loss"]
    assert stats["length"]["improvement_pct"] == pytest.approx(100 * (r - m) / r)


def test_lm_news_keeps_each_article_in_one_split():
    from tov_datasets import assets

    data = CONFIGS["lm_news"].build(3, **CONFIGS["lm_news"].sizes["small"].data)
    assert data["meta"]["pool_target"] == 12 and data["meta"]["pool_sources"]["wiki"] == 48
    assert (len(data["val"]), len(data["test"])) == (8, 12)
    articles = [" ".join(t.split()) for t in assets.bbc_news()["text"]]

    def article_of(text: str) -> int:
        found = [i for i, a in enumerate(articles) if " ".join(text.split()) in a]
        assert found, text
        return found[0]

    split_articles = {
        part: {article_of(r["text"]) for r in data[part] if r["is_target"]}
        for part in ("val", "test", "pool")
    }
    assert not split_articles["val"] & split_articles["test"]
    assert not (split_articles["val"] | split_articles["test"]) & split_articles["pool"]
    assert all(r["source"] == "wiki" for r in data["pool"] if not r["is_target"])


def test_chat_long_v2_answers_share_one_length_range():
    """Every row of every source, targets included, answers in 90-200 tokens; the pool is
    full even where the other evals run short of such answers."""
    from tov_datasets import assets

    tok = assets.demo_tokenizer()
    cfg = CONFIGS["chat_long_v2"]
    sizes = cfg.sizes["small"]
    lo, hi = sizes.data["answer_tokens"]
    data = cfg.build(1, **sizes.data)
    assert len(data["pool"]) == sizes.data["pool_size"]
    assert data["meta"]["pool_target"] == sizes.data["target_in_pool"]
    assert {"evals", "wiki", "bbc", "icelandic"} == set(data["meta"]["pool_sources"])
    for part in ("pool", "val", "test"):
        for row in data[part]:
            answer = len(tok(row["messages"][-1]["content"])["input_ids"])
            assert lo <= answer <= hi, (part, row["source"], answer)


def test_chat_labels_conflicting_rows_answer_under_another_scheme():
    """Target rows answer with their article's section; conflicting rows ask the same
    question and answer with a deranged section (never the true one, one mapping per seed);
    every chat fits max_length; no passage is in two splits."""
    from benchmarks.quality_configs import NEWS_QUESTION, derangement
    from tov_datasets import assets

    labels = ["a", "b", "c", "d", "e"]
    for seed in range(20):
        moved = derangement(labels, np.random.default_rng(seed))
        assert sorted(moved.values()) == labels and all(moved[x] != x for x in labels)
    tok = assets.demo_tokenizer()
    cfg = CONFIGS["chat_labels"]
    sizes = cfg.sizes["small"]
    data = cfg.build(2, **sizes.data)
    assert data["meta"]["pool_sources"] == {"bbc": 12, "conflicting": 12, "wiki": 36}
    scheme: dict[str, str] = {}
    for part in ("pool", "val", "test"):
        for row in data[part]:
            question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
            chat = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True)
            assert len(chat["input_ids"]) <= sizes.max_length
            news = row["source"] != "wiki"
            assert question.startswith(NEWS_QUESTION) == news
            assert row["is_target"] == (row["source"] == "bbc")
            if row["source"] == "conflicting":
                assert answer != row["category"]
                assert scheme.setdefault(row["category"], answer) == answer
            else:
                assert answer == row["category"]
    passages = {part: {r["messages"][0]["content"] for r in data[part] if r["source"] != "wiki"}
                for part in ("pool", "val", "test")}
    assert not passages["val"] & passages["test"]
    assert not (passages["val"] | passages["test"]) & passages["pool"]


def test_source_metrics_against_pair_counts():
    """auc_vs_source: the target rows against one other source's rows alone, as the share of
    (target, other) pairs the score orders right (ties half); source_shares: plain counts."""
    from datasets import Dataset

    rng = np.random.default_rng(5)
    sources = np.array(["t", "a", "b", "t", "a", "b", "t", "a", "b", "t", "a", "a"])
    pool = Dataset.from_dict({"source": sources.tolist(),
                              "is_target": (sources == "t").tolist()})
    s = quality.Setup(None, quality.TINY_SIZES, 0, pool, None, None, {}, None, None, None,
                      None)
    scores = rng.normal(size=sources.size).round(1)
    ranking = quality.ranking_metrics(s, scores, {})
    for src in ("a", "b"):
        pairs = [(x > o) + 0.5 * (x == o) for x in scores[sources == "t"]
                 for o in scores[sources == src]]
        assert ranking["auc_vs_source"][src] == pytest.approx(np.mean(pairs))
    assert set(ranking["auc_vs_source"]) == {"a", "b"}
    shares = quality.source_shares(s, np.array([0, 1, 4, 7]))
    assert shares == {"a": 0.75, "b": 0.0, "t": 0.25}
    assert quality.mean_by_key([{"a": 1.0, "b": 0.0}, {"a": 0.5}]) == {"a": 0.75, "b": 0.0}


def test_cache_writers_in_several_processes_do_not_clash(tmp_path):
    """Processes filling one cache entry at once (two quality runs on one machine) each write
    their own temporary file; the entry ends whole and no temporary file is left."""
    import multiprocessing

    path = tmp_path / "entry.jsonl"
    rows = [{"i": i, "text": "x" * 200} for i in range(5000)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=eval_data._write_jsonl, args=(path, rows)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 4
    assert eval_data._read_jsonl(path) == rows and list(tmp_path.iterdir()) == [path]


def test_silver_sentences_labelled_by_several_processes_at_once(tmp_path, monkeypatch):
    """Two processes drawing the same silver sentences at once (a copy of the input stands in
    for the spaCy labelling) both finish and leave only the cache entry and the script."""
    import multiprocessing
    import shutil
    import time

    def fake_spacy(cmd, check):
        time.sleep(0.2)
        shutil.copyfile(cmd[2], cmd[3])

    monkeypatch.setattr(eval_data, "bench_cache", lambda: tmp_path)
    monkeypatch.setattr(eval_data, "spacy_python", lambda: "python")
    monkeypatch.setattr(eval_data.subprocess, "run", fake_spacy)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=eval_data.silver_sentences, args=(6, 123)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    rows = eval_data.silver_sentences(6, 123)  # from the cache entry
    assert len(rows) == 6 and {r["source"] for r in rows} == {"wiki", "bbc"}
    entries = [f.name for f in tmp_path.glob("ner-silver-*.jsonl")]
    assert len(entries) == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([*entries, "spacy_label.py"])
    assert (tmp_path / "spacy_label.py").read_text() == eval_data._SPACY_SCRIPT


def _record(seed, method, loss, entity=None):
    return {"seed": seed, "method": method, "test_loss": loss, "target_share": 0.5,
            "entity_share": entity, "ranking": {}}


def test_summary_keeps_per_seed_gains_and_paired_differences_of_selectors():
    random = {0: 2.0, 1: 4.0, 2: 5.0, 3: 1.0}
    a = {0: 1.0, 1: 3.0, 2: 5.5, 3: 0.5}
    b = {0: 1.5, 1: 3.5, 2: 4.0}  # no seed 3
    per_seed = ([_record(sd, "random", x) for sd, x in random.items()]
                + [_record(sd, "oracle", 0.1) for sd in random]
                + [_record(sd, "a", x, entity=0.1 * (sd + 1)) for sd, x in a.items()]
                + [_record(sd, "b", x) for sd, x in b.items()])
    stats = quality.summarise(per_seed, ["random", "oracle", "a", "b"])["stats"]
    gain_a = [100 * (random[sd] - a[sd]) / random[sd] for sd in range(4)]
    assert stats["a"]["improvement_pct_by_seed"] == pytest.approx(gain_a)
    assert stats["a"]["improvement_pct"] == pytest.approx(sum(gain_a) / 4)
    assert stats["a"]["entity_share_by_seed"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert "entity_share_by_seed" not in stats["b"]
    # a minus b on the three seeds both finished: +25, +12.5 and -30 points
    diff = [100 * (b[sd] - a[sd]) / random[sd] for sd in range(3)]
    mean = sum(diff) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diff) / 2 / 3)
    assert stats["a"]["paired_vs"]["b"] == pytest.approx(
        {"seeds": 3, "mean_pp": mean, "se_pp": se, "ahead": 2, "behind": 1})
    assert stats["b"]["paired_vs"]["a"]["mean_pp"] == pytest.approx(-mean)
    assert "paired_vs" not in stats["random"] and "paired_vs" not in stats["oracle"]
    md = "\n".join(quality.seed_tables(stats))
    assert "| a | +50.0 (10.0) | +25.0 (20.0) | -10.0 (30.0) | +50.0 (40.0) |" in md
    assert "| b | +25.0 | +12.5 | +20.0 |  |" in md
    assert f"| a | b | 3 | {mean:+.2f} ± {se:.2f} | 2 | 1 |" in md
    assert "Gain vs random by seed, % (entity-tag share of the pick's rows, %):" in md
    del stats["a"]  # no method recorded entity shares: the heading does not promise them
    md = "\n".join(quality.seed_tables(stats))
    assert "Gain vs random by seed, %:" in md and "entity" not in md


def test_add_to_a_stored_result_runs_only_the_new_method(tmp_path, monkeypatch):
    """--add-to reuses a stored result's budget, controls and methods (nothing of them is
    recomputed), runs the new method (unprojected LESS here) on every seed and keeps the
    stored configuration commit; a result of another configuration or seeds is refused."""
    args = ["--config", "lm_tweets", "--tiny", "--threads", "1", "--force"]
    first = quality.main([*args, "--methods", "length", "--out-dir", str(tmp_path / "a")])
    stored = json.loads(first.read_text())
    stored["summary"]["config_commit"] = "0123abc"
    # written before Sizes had first_seed: the field counts at its default (0 = tiny's)
    del stored["config"]["sizes"]["first_seed"]
    first.write_text(json.dumps(stored))
    ran = []
    real = quality.run_selector

    def only_less(name, s):
        assert name == "less_unprojected", name
        ran.append(s.seed)
        return real(name, s)

    monkeypatch.setattr(quality, "run_selector", only_less)
    monkeypatch.setattr(quality, "calibrate", _refuse)
    path = quality.main([*args, "--methods", "less_unprojected", "--add-to", str(first),
                         "--out-dir", str(tmp_path / "b")])
    record = json.loads(path.read_text())
    assert ran == [0, 1] and record["summary"]["config_commit"] == "0123abc"
    stats, before = record["details"]["stats"], stored["details"]["stats"]
    for m in ("random", "oracle", "length"):
        assert stats[m]["test_loss"] == before[m]["test_loss"]
        assert stats[m]["improvement_pct_by_seed"] == before[m]["improvement_pct_by_seed"]
    assert stats["less_unprojected"]["seeds"] == [0, 1]
    assert 0.0 <= stats["less_unprojected"]["auc"] <= 1.0
    assert record["details"]["calibration"] == stored["details"]["calibration"]
    other_seeds = tmp_path / "other_seeds.json"
    stored["config"]["sizes"]["first_seed"] = 1
    other_seeds.write_text(json.dumps(stored))
    with pytest.raises(SystemExit, match="not a result of --config lm_tweets"):
        quality.main([*args, "--methods", "length", "--add-to", str(other_seeds),
                      "--out-dir", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="not a result of --config chat_long"):
        quality.main(["--config", "chat_long", "--tiny", "--threads", "1", "--force",
                      "--methods", "length", "--add-to", str(first),
                      "--out-dir", str(tmp_path / "c")])


@pytest.mark.parametrize("name, changed", [("tov_rank4", "lora"), ("tov_epochs3", "epochs")])
def test_tov_setting_variant_changes_only_its_setting(monkeypatch, name, changed):
    """``tov_rank<r>`` / ``tov_epochs<L>`` run the default ToV ("tov") with the selector's
    LoRA at rank r / for L trajectory epochs and every other setting of the configuration;
    the setup's own LoRA config is left as it was."""
    s = quality.setup(CONFIGS["lm_tweets"], "tiny", 0)
    rank = s.selector_lora.r
    calls = []
    monkeypatch.setattr(quality.tov, "run", lambda *a, **k: calls.append(k))
    quality.tov_result(s, "tov")
    quality.tov_result(s, name)
    default, variant = calls
    assert variant["name"] == default["name"] == "tov"
    assert {k: v for k, v in variant.items() if k != changed} == {
        k: v for k, v in default.items() if k != changed}
    assert default["lora"] is s.selector_lora and s.selector_lora.r == rank
    if changed == "lora":
        assert variant["lora"].r == 4 != rank
        assert dataclasses.replace(variant["lora"], r=rank) == s.selector_lora
    else:
        assert variant["epochs"] == 3 != default["epochs"] == s.sizes.epochs


@pytest.mark.parametrize("name, rule", [("tov_val_continue", "continue"),
                                        ("tov_val_sgd", "sgd")])
def test_tov_val_variant_changes_only_the_val_update_rule(monkeypatch, name, rule):
    """``tov_val_<rule>`` calls `tov_select` with the default ToV's arguments and
    ``val_optimizer=<rule>`` ("tov" keeps "fresh", the rule its stored runs judged)."""
    s = quality.setup(CONFIGS["lm_tweets"], "tiny", 0)
    calls = []
    monkeypatch.setattr(quality.tov, "tov_select", lambda *a, **k: calls.append((a, k)))
    quality.tov_result(s, "tov")
    quality.tov_result(s, name)
    (default_args, default), (variant_args, variant) = calls
    assert variant.pop("val_optimizer") == rule
    assert default.pop("val_optimizer") == quality.tov.JUDGED_VAL_OPTIMIZER == "fresh"
    # "tov" names its F; the variant takes the library's default F, the same identity
    assert default.pop("transform") == trajectory.ToVConfig().transform == "identity"
    assert variant_args == default_args and variant == default


def test_merge_progress_adds_another_processs_entries_and_refuses_a_mismatch(tmp_path):
    key = {"config_commit": "abc", "seeds": [1, 2]}
    mine = quality.Progress(tmp_path / "mine.json", key)
    mine.put("calibration", {"lr": 1e-3})
    mine.put("1/random", {"test_loss": 1.0})
    theirs = quality.Progress(tmp_path / "theirs.json", key)
    theirs.put("calibration", {"lr": 1e-3})
    theirs.put("2/random", {"test_loss": 2.0})
    assert mine.merge(theirs.path) == 1
    assert quality.Progress(mine.path, key).done == {
        "calibration": {"lr": 1e-3}, "1/random": {"test_loss": 1.0},
        "2/random": {"test_loss": 2.0}}
    theirs.put("1/random", {"test_loss": 1.5})
    with pytest.raises(SystemExit, match="disagrees on .'1/random'"):
        mine.merge(theirs.path)
    other = quality.Progress(tmp_path / "other.json", {**key, "config_commit": "def"})
    other.put("3/random", {"test_loss": 3.0})
    with pytest.raises(SystemExit, match="of another run"):
        mine.merge(other.path)
    with pytest.raises(SystemExit, match="no such file"):
        mine.merge(tmp_path / "missing.json")
    assert "3/random" not in quality.Progress(mine.path, key).done


def _chats(answers):
    from datasets import Dataset

    return Dataset.from_list([{"messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": a}]}
                              for a in answers])


def test_label_strata_are_the_answers_weighted_by_the_validation_set():
    s = quality.Setup(CONFIGS["chat_labels_v3"], quality.TINY_SIZES, 0,
                      _chats(["b", "a", "c", "a", "b"]), _chats(["a", "a", "b", "d"]), None, {},
                      None, None, None, None)
    got = quality.label_strata(s)
    # labels in sorted order a, b, c, d: the pool has no "d", the validation set no "c"
    assert got["strata"].tolist() == [1, 0, 2, 0, 1]
    assert got["stratum_weights"].tolist() == [2, 1, 0, 1]
    assert quality.answer_shares(s, np.array([0, 1, 3])) == {"a": 2 / 3, "b": 1 / 3}
    with pytest.raises(ValueError, match="has no strata"):
        quality.label_strata(dataclasses.replace(s, config=CONFIGS["chat_labels"]))


def _largest_remainder_quotas(total, labels, like):
    """Independent reference: ``total`` split over ``labels`` by their counts in the list
    ``like`` (largest remainder, ties to the first label)."""
    from fractions import Fraction

    exact = [Fraction(total * like.count(w), len(like)) for w in labels]
    quota = [int(x) for x in exact]
    for k in sorted(range(len(labels)), key=lambda k: (-(exact[k] - quota[k]), k))[
            : total - sum(quota)]:
        quota[k] += 1
    return dict(zip(labels, quota, strict=True))


def test_strata_picks_give_each_validation_label_its_quota(tmp_path):
    """The strata picks (tiny run of chat_labels_v4, whose ToV run fine-tunes tov_strata and
    tov_strata_all only): the scored half holds each validation answer's share of n / 2
    (largest remainder), so every such answer has at least that many rows in the pick; the
    _all picks hold only validation answers."""
    path = quality.main(["--config", "chat_labels_v4", "--tiny", "--threads", "1", "--force",
                         "--methods", "tov,strata_random,strata_random_all",
                         "--out-dir", str(tmp_path)])
    per_seed = json.loads(path.read_text())["details"]["per_seed"]
    assert {r["method"] for r in per_seed} == {"random", "oracle", "tov_strata",
                                                "tov_strata_all", "strata_random",
                                                "strata_random_all"}
    n = quality.TINY_SIZES.n
    for seed in (0, 1):
        s = quality.setup(CONFIGS["chat_labels_v4"], "tiny", seed)
        val = quality.answers(s.val).tolist()
        quota = _largest_remainder_quotas(n // 2, sorted(set(val)), val)
        for method in ("tov_strata", "strata_random", "tov_strata_all", "strata_random_all"):
            r = next(r for r in per_seed if r["seed"] == seed and r["method"] == method)
            assert sum(r["answer_shares"].values()) == pytest.approx(1.0)
            for w, q in quota.items():
                assert r["answer_shares"].get(w, 0.0) * n >= q - 1e-9, (seed, method, w)
            if method.endswith("_all"):
                assert set(r["answer_shares"]) <= set(val), (seed, method)


def test_strata_picks_split_the_scored_half_and_whole_pick_over_the_validation_labels():
    """tov_strata_all's shape (whole=True): tov_strata's scored half, plus a random half in
    the same label quotas drawn from U's rows outside the scored half (labels the validation
    set lacks: none); tov_strata's (whole=False): the same scored half, its random half from
    U over all labels. Both are the picks chat_labels_v2-v4 were measured with (the lists
    below were computed by the benchmark's code at 4ee67c3, before the library's random
    part took the quotas too)."""
    from tov_datasets.select import select_indices

    pool = list("abzcabzcabzcabzcab")
    val = ["a", "a", "b", "c"]
    sizes = dataclasses.replace(quality.TINY_SIZES, n=7)
    s = quality.Setup(CONFIGS["chat_labels_v4"], sizes, 3, _chats(pool), _chats(val), None,
                      {}, None, None, None, None)
    rng = np.random.default_rng(0)
    scores, counts = rng.normal(size=len(pool)), rng.integers(1, 9, len(pool))
    base = np.array([0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 13, 16])
    whole = quality.strata_pick(s, scores, counts, base, whole=True)
    part = quality.strata_pick(s, scores, counts, base, whole=False)
    assert whole.tolist() == [0, 1, 4, 5, 7, 11, 16]
    assert part.tolist() == [0, 1, 2, 3, 5, 7, 9]
    scored = select_indices(scores.astype(np.float32), counts, 3, random_fraction=0.0,
                            **quality.label_strata(s))
    assert set(scored) <= set(whole) and set(scored) <= set(part)
    for pick in (whole, part):
        assert np.all(np.diff(pick) > 0) and pick.size == 7
        assert set(pick) - set(scored) <= set(base)
    drawn_answers = [pool[i] for i in sorted(set(whole) - set(scored))]
    want = _largest_remainder_quotas(4, ["a", "b", "c"], val)
    assert {w: drawn_answers.count(w) for w in want} == want
    with pytest.raises(ValueError, match="tov_picks .'tov_nobody'. are not picks"):
        quality.tov_picks(dataclasses.replace(CONFIGS["chat_labels_v4"],
                                              tov_picks=("tov_nobody",)))
    assert quality.tov_picks(CONFIGS["chat_labels_v3"]) == [
        "tov", "tov_score_only", "tov_nobins", "tov_strata"]


def test_tov_holdout_yields_the_switch_and_the_two_picks_it_chooses_between(tmp_path,
                                                                           monkeypatch):
    """``tov_holdout`` (a fifth of the validation set held out, `tov.HOLDOUT_SWITCH`): per
    seed its pick is the Score+Random pick (``tov_holdout_sr``) where the held-out AUC is
    below 0.875, the scored pick alone (``tov_holdout_scored``) at or above it, and that
    pick's fine-tune is reused (two per seed, not three); the derived picks equal the
    library's own picks from the same run with a fixed random share; the check and its
    decision are recorded per seed and summarised."""
    fine_tuned = []
    real = quality.pick_test_loss
    monkeypatch.setattr(quality, "pick_test_loss", lambda s, idx, budget: (
        fine_tuned.append((s.seed, tuple(idx))) or real(s, idx, budget)))
    path = quality.main(["--config", "lm_tweets", "--tiny", "--threads", "1", "--force",
                         "--methods", "tov_holdout", "--out-dir", str(tmp_path)])
    record = json.loads(path.read_text())
    per_seed = record["details"]["per_seed"]
    stats = record["details"]["stats"]
    assert quality.tov.HOLDOUT_SWITCH == {"holdout_fraction": 0.2, "scored_only_above": 0.875}
    for seed in (0, 1):
        picks = {r["method"]: r for r in per_seed if r["seed"] == seed}
        check = picks["tov_holdout"]["holdout"]
        assert all(picks[m]["holdout"] == check for m in quality.HOLDOUT_DERIVED)
        chosen = "tov_holdout_scored" if check["auc"] >= 0.875 else "tov_holdout_sr"
        assert check["scored_only"] == (chosen == "tov_holdout_scored")
        assert picks["tov_holdout"]["idx"] == picks[chosen]["idx"]
        assert picks["tov_holdout"]["test_loss"] == picks[chosen]["test_loss"]
        holdout_runs = [tuple(picks[m]["idx"]) for m in quality.HOLDOUT_DERIVED]
        assert sorted(t for sd, t in fine_tuned if sd == seed and t in holdout_runs) == sorted(
            holdout_runs) and holdout_runs[0] != holdout_runs[1]
        s = quality.setup(CONFIGS["lm_tweets"], "tiny", seed)
        for name, fraction in (("tov_holdout_sr", 0.5), ("tov_holdout_scored", 0.0)):
            r = quality.tov_result(s, "tov_holdout", scored_only_above=None,
                                   random_fraction=fraction)
            assert r.holdout.auc == check["auc"] and len(r.holdout.rows) == check["rows"]
            assert quality.tov.selected_rows(r).tolist() == picks[name]["idx"], (seed, name)
    assert stats["tov_holdout"]["holdout_auc_by_seed"] == [
        r["holdout"]["auc"] for r in per_seed if r["method"] == "tov_holdout"]
    assert stats["tov_holdout"]["holdout_scored_only_seeds"] == sum(
        r["holdout"]["scored_only"] for r in per_seed if r["method"] == "tov_holdout")
    assert "holdout" not in stats["random"] and "holdout_auc_by_seed" not in stats["random"]
