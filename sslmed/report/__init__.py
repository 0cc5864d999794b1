"""Runs -> one comparison report: tables with 95% confidence intervals, and figures.

``build_report(run_dirs, out)`` reads finished run folders (``results.json``,
``recipe.yaml``, ``manifest.json``, ``timings.json``, ``steps/<step>/logs/metrics.csv``
and the step exports) and writes ``report.md`` and ``report.html`` with PNG figures
beside them:

* one table per target set: one row per method (random init and supervised references,
  then each recipe's linear probe), with accuracy, balanced accuracy, macro AUC and
  per-class recall, each with a 95% CI: the mean and a t-interval over runs that differ
  only by seed, or, for a single run, a percentile bootstrap over the test images
  (from the per-image predictions each results row keeps);
* training loss curves (every logged loss term), the runs' tensor-stage augmentations
  on real test images, reconstructions by an exported decoder (input, augmented view,
  reconstruction), confusion matrices, and a label-fraction curve when several
  fractions were run;
* the runs themselves: machine, commit, steps, epochs and wall time.

Method names, their order and the claims checked come from :class:`Labels` (none by
default). The modules: :mod:`~sslmed.report.runs` (run discovery),
:mod:`~sslmed.report.stats` (metrics, intervals, table entries, claims),
:mod:`~sslmed.report.figures`, :mod:`~sslmed.report.render` (Markdown, HTML, the report).
"""

from sslmed.report.labels import BASELINE_NAMES, Claim, Labels
from sslmed.report.render import build_report, markdown_table, runs_table
from sslmed.report.runs import Run, find_runs, load_run
from sslmed.report.stats import Entry, bootstrap_ci, claim_lines, entries_for_target, metric_values, seed_ci, summarise

__all__ = [
    "BASELINE_NAMES",
    "Claim",
    "Entry",
    "Labels",
    "Run",
    "bootstrap_ci",
    "build_report",
    "claim_lines",
    "entries_for_target",
    "find_runs",
    "load_run",
    "markdown_table",
    "metric_values",
    "runs_table",
    "seed_ci",
    "summarise",
]
