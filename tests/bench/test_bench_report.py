"""The results as the blog shows them: a markdown table with the gain over the baseline."""

from lib_ort.bench.report import markdown_table


def test_markdown_table_shows_gain_over_the_baseline():
    rows = [{"config": "A", "batch": 1, "steps": 1, "images_per_s": 2.0},
            {"config": "B", "batch": 1, "steps": 1, "images_per_s": 5.0},
            {"config": "B", "batch": 4, "steps": 1, "images_per_s": None, "error": "PyTorch ran: x"}]
    table = markdown_table(rows)
    assert "| (1,1) | 2 img/s | 5 img/s, 2.50× |" in table
    assert "| (4,1) | – | PyTorch ran: x |" in table
