"""The DVC plot definitions, read as files (no DVC run, so these run in the quick suite): which
columns of the evaluation CSV are plotted, with which templates and axis labels, and the
training plots' legend."""

from __future__ import annotations

import json
from pathlib import Path


def test_every_evaluation_column_is_plotted_on_a_scale_that_shows_the_differences() -> None:
    """`dvc plots show` drew the four quality metrics as bars from 0, so methods 0.767-0.800 apart
    in QG looked equal, and left PSNR, SSIM and DM_acc out. Every column of the evaluation CSV is
    a plot, drawn by a template whose value axis does not start at 0; the epoch axis has whole
    ticks."""
    import yaml

    root = Path(__file__).parents[1]
    plots = {k: v for entry in yaml.safe_load((root / "dvc.yaml").read_text())["plots"] for k, v in entry.items()}
    from bafusion.evaluation.evaluate import INF_COUNT_PREFIX

    columns = (root / "metrics" / "plots" / "evaluate.csv").read_text().splitlines()[0].split(",")[1:]
    # n_inf_PSNR: how many pairs its mean counts as 100 dB, a note for the tooltip, not a plot
    for col in [c for c in columns if not c.startswith(INF_COUNT_PREFIX)]:
        plot = plots[f"evaluate_{col}"]
        assert plot["x"] == col and plot["y"] == {"metrics/plots/evaluate.csv": "method"}
        template = json.loads((root / plot["template"]).read_text())
        assert template["encoding"]["x"]["scale"] == {"zero": False}, col
    series = json.loads((root / "workflow" / "plots" / "series.json").read_text())
    assert series["encoding"]["x"]["axis"]["tickMinStep"] == 1


def test_every_evaluation_plot_says_which_way_is_better() -> None:
    """DVC has no direction key for a metric: the evaluate plots' value axes were the bare metric
    names. Each says '(higher is better)' or '(lower is better)' (x_label, which DVC accepts)."""
    import yaml

    from bafusion.evaluation.evaluate import LOWER_IS_BETTER

    root = Path(__file__).parents[1]
    plots = {k: v for entry in yaml.safe_load((root / "dvc.yaml").read_text())["plots"] for k, v in entry.items()}
    for name, plot in plots.items():
        if name.startswith("evaluate_"):
            col = plot["x"]
            assert plot.get("x_label") == f"{col} ({'lower' if col in LOWER_IS_BETTER else 'higher'} is better)", name


def test_training_plots_legend_draws_each_revisions_dash() -> None:
    """`dvc plots diff HEAD "$exp"` dashed the lines by revision, but the 'revision' legend took
    the point mark's symbol: a filled black circle for every revision (its dash invisible), so
    nobody could tell which dash was the experiment. The legend draws a black line in each
    revision's dash (Vega-Lite puts a transparent stroke on these symbols unless the legend's
    own encode sets one)."""
    root = Path(__file__).parents[1]
    series = json.loads((root / "workflow" / "plots" / "series.json").read_text())
    dash = series["encoding"]["strokeDash"]
    assert dash["field"] == "rev"
    legend = dash["legend"]
    assert legend["symbolType"] == "stroke" and legend["symbolStrokeWidth"] >= 1, legend
    symbols = legend["encode"]["symbols"]["update"]
    assert symbols["stroke"] == {"value": "black"} and symbols["fill"] == {"value": "transparent"}, symbols
