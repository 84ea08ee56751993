"""`unictr report`: one self-contained HTML page of a run (or several compared, or an experiment's arms).

`gather` reads the directories, `figures` draws the images, `html` holds the page's building blocks and
`page` puts them together; docs/report.md shows the command.
"""

from unictr.report.gather import ReportError
from unictr.report.page import write_report

__all__ = ["ReportError", "write_report"]
