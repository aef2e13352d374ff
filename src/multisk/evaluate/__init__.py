"""multisk.evaluate: retrieval in every direction, report tables and figures.

``multisk.evaluate.plot_primitives`` (matplotlib) is imported on demand, not here, to keep this import light.
"""

from multisk.evaluate.directions import (
    ALL_DIRECTIONS,
    available_directions,
    direction_ranks,
    evaluate_directions,
)
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
    "ALL_DIRECTIONS", "available_directions", "comparison_table", "direction_ranks",
    "evaluate_directions", "format_markdown_table", "format_results_table", "format_text_table",
    "read_metrics_json", "results_to_markdown", "write_metrics_json",
]
