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
