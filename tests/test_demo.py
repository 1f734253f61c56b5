"""The README's first quick-start command runs `transferkit demo`: keep its job working end to end."""

from transferkit.demo import run_demo


def test_demo_quick_trains_the_three_strategies_on_real_digits(tmp_path):
    summaries = run_demo(tmp_path / "demo", quick=True)
    assert [s["strategy"] for s in summaries] == ["feature-extraction", "finetune", "lp-ft"]
    by_name = {s["strategy"]: s["metrics"]["accuracy"] for s in summaries}
    # 10 classes (chance 0.1). Two head epochs on frozen features already separate the digits; one epoch of
    # plain fine-tuning from a random head does not (measured 0.23), which is what LP-FT's warm-up fixes.
    assert by_name["feature-extraction"] > 0.8, by_name
    assert by_name["lp-ft"] > 0.8, by_name
    assert by_name["finetune"] > 0.15, by_name
    assert (tmp_path / "demo" / "lp-ft" / "report.html").is_file()
