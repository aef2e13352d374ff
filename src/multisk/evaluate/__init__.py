"""multisk.evaluate: the evaluation application — embedding splits, report tables and figures (retrieval in
every direction is :mod:`multisk.metrics.directions`).

``multisk.evaluate.plot_primitives`` (matplotlib) is imported on demand, not here, to keep this import light.
"""

from multisk.evaluate.report import (
    comparison_table,
    format_markdown_table,
    format_results_table,
    format_text_table,
    read_metrics_json,
    results_to_markdown,
    write_metrics_json,
)

__all__ = [
    "comparison_table", "format_markdown_table", "format_results_table", "format_text_table",
    "read_metrics_json", "results_to_markdown", "write_metrics_json",
]
