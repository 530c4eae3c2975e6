"""The README's results section is generated from benchmarks/results (no hand-typed figures)."""

from benchmarks import readme_results


def test_readme_results_match_the_json_files():
    text = readme_results.README.read_text()
    block = text.split(readme_results.START, 1)[1].split(readme_results.END, 1)[0]
    assert block.strip() == readme_results.render().strip(), (
        "README results are stale: run python benchmarks/readme_results.py --write"
    )


def test_readme_quality_tables_match_the_json_files():
    text = readme_results.README.read_text()
    block = text.split(readme_results.QSTART, 1)[1].split(readme_results.QEND, 1)[0]
    assert block.strip() == readme_results.render_quality().strip(), (
        "README quality tables are stale: run python benchmarks/readme_results.py --write"
    )


def test_readme_shows_the_two_commands():
    text = readme_results.README.read_text()
    assert "make demo" in text and "make test" in text


def test_by_source_table_lists_each_source_share_and_auc():
    stats = {"random": {"test_loss": 1.0},
             "tov": {"source_shares": {"bbc": 0.5, "wiki": 0.25, "conflicting": 0.25},
                     "auc_vs_source": {"wiki": 0.9, "conflicting": 0.75}},
             "length": {"source_shares": {"bbc": 0.1, "wiki": 0.9}}}
    lines = readme_results._by_source(stats)
    assert lines[2] == ("| method | bbc % | conflicting % | wiki % | AUC vs conflicting "
                        "| AUC vs wiki |")
    assert lines[4] == "| tov | 50.0 | 25.0 | 25.0 | 0.750 | 0.900 |"
    assert lines[5] == "| length | 10.0 | 0.0 | 90.0 | n/a | n/a |"
    assert readme_results._by_source({"random": {"test_loss": 1.0}}) == []


def test_quality_budget_names_a_schedule_other_than_constant():
    assert readme_results._schedule_note({}) == ""
    assert readme_results._schedule_note({"finetune_schedule": "constant"}) == ""
    assert readme_results._schedule_note({"finetune_schedule": "linear"}) == (
        " (linear decay, a fixed recipe)")


def test_scoreboard_cell_gives_gain_se_seeds_with_a_gain_and_bolds_above_two_se():
    cell = readme_results._gain_cell
    assert cell({"improvement_pct": 3.16, "improvement_se_pct": 0.43,
                 "improvement_pct_by_seed": [3.4, 3.5, 4.3, 3.0, 1.6]}) == "**+3.16 ± 0.43 (5/5)**"
    assert cell({"improvement_pct": -9.04, "improvement_se_pct": 6.53,
                 "improvement_pct_by_seed": [3.9, -17.2, -13.8]}) == "-9.04 ± 6.53 (1/3)"
    assert cell({"improvement_pct": 2.0, "improvement_se_pct": 1.0}) == "+2.00 ± 1.00"  # = 2 se
    assert cell({"improvement_pct": 5.0, "improvement_se_pct": float("nan")}) == "+5.00 ± n/a"
    assert cell(None) == "not run"


def test_scoreboard_column_shows_its_first_method_present_and_names_a_fallback():
    cell = readme_results._scoreboard_cell
    gain = {"improvement_pct": 1.5, "improvement_se_pct": 1.0}
    methods = ("less", "less_unprojected")
    assert cell({"less": gain, "less_unprojected": {**gain, "improvement_pct": 9.0}},
                methods) == "+1.50 ± 1.00"
    assert cell({"less_unprojected": gain}, methods) == "+1.50 ± 1.00 `less_unprojected`"
    assert cell({"tov": gain}, methods) == "not run"
