"""Screenshot report.html of one or more run directories in headless Chromium (the docs' picture).

    .venv/bin/python scripts/screenshot_report.py RUN_DIR [RUN_DIR ...] --output docs/report-screenshot.png

Draws the page as `tfopt report` does, opens it with the browser check of
tests/test_html_report.py, fails on any console error, and keeps the top --height pixels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from headless_chromium import check_page  # noqa: E402

from tfopt.html_report import write_report_page  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=2400, help="keep the page's top HEIGHT pixels")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        page = write_report_page(args.run_dirs, Path(scratch) / "report.html")
        seen = check_page(page, args.output, width=args.width, max_height=args.height)
        print(f"{page.stat().st_size / 1024:.0f} KB, {len(seen.plots)} plots, {seen.page_height} px tall; errors: {seen.errors or 'none'}")
    return 1 if seen.errors else 0


if __name__ == "__main__":
    sys.exit(main())
