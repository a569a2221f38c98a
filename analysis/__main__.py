"""``python -m analysis RESULTS_DIR``: print or write the paper's tables (or, with
``--plot``, draw its figures) for sweep results.

``RESULTS_DIR`` is a local folder or an object store's ``s3://bucket/prefix/NAME``
(credentials and endpoint from the environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``); so may ``--out`` be.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import textwrap
from collections.abc import Iterator

from analysis.figures import FIGURE_HELP, FIGURES, write_figures
from analysis.render import FORMATS, render
from analysis.results_io import load_teachers, load_trials
from analysis.search_table import load_records
from analysis.tables import TABLE_HELP, TABLES, build_tables
from kd_tune.core.logs import ConsoleFormatter
from kd_tune.core.status import TrialStatus
from kd_tune.storage import open_storage


class _Console(logging.StreamHandler):
    """The command line's console for the ``analysis`` loggers: on standard error, INFO as the bare
    message, a warning (or worse) after ``warning: ``; it keeps the messages (``lines``) for an error
    that sums them up."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(ConsoleFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        super().emit(record)


@contextlib.contextmanager
def _console() -> Iterator[_Console]:
    """:class:`_Console` on the ``analysis`` logger (level INFO) for the block; removed after it."""
    logger, handler = logging.getLogger("analysis"), _Console()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _parser() -> argparse.ArgumentParser:
    def fill(text: str, indent: str = "") -> str:
        return textwrap.fill(text, width=88, initial_indent=indent, subsequent_indent=indent + "    ")

    tables = "\n".join(fill(f"{name}: {TABLE_HELP[name]}", "  ") for name in TABLES)
    figures = "\n".join(fill(f"{name}: {FIGURE_HELP[name]}", "  ") for name in FIGURES)
    return argparse.ArgumentParser(
        prog="python -m analysis",
        description=fill(
            "Build the paper's tables from kd-tune sweep results. Each cell is the last-epoch "
            "test accuracy in percent: mean ± sample std (n seeds) over completed trials; "
            "diverged/failed trials are left out and counted separately (an 'excluded:' line "
            "under each Markdown table). Published numbers follow in [brackets] where a "
            "clean-label cell matches one (CIFAR-100, Kim et al.)."),
        epilog=f"tables:\n{tables}\n\nformats:\n" + "\n".join([
            fill("csv: wide and lossless: setting columns, 'row', then per column label c "
                 "'c mean', 'c std', 'c n' (and 'c paper'); percent, full precision", "  "),
            fill("md: Markdown, cells 'mean ± std (n) [paper]', 2 decimals", "  "),
            fill("latex: a booktabs table environment per table", "  ")])
        + f"\n\nfigures (--plot NAME|all --out DIR; NAME.png and NAME.pdf):\n{figures}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    with _console() as console:
        return _main(argv, console)


def _main(argv: list[str] | None, console: _Console) -> int:
    parser = _parser()
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="a sweep folder (holding results/trials/) or a folder of sweep "
                             "folders (all are read together); local, or s3://bucket/prefix/NAME")
    parser.add_argument("--table", default="tau_alpha", choices=TABLES,
                        help="which table to build (default: tau_alpha; see below)")
    parser.add_argument("--format", default="md", choices=FORMATS, dest="fmt",
                        help="output format (default: md)")
    parser.add_argument("--out", metavar="FILE",
                        help="write to FILE (whole, atomically) instead of standard output; with --plot, the "
                             "folder the figures go to (required); local or s3://...")
    parser.add_argument("--plot", metavar="NAME", choices=(*FIGURES, "all"),
                        help="draw a figure (or all that the results fit) instead of a table; see below")
    parser.add_argument("--no-reference", action="store_true",
                        help="do not show the published reference numbers next to the cells")
    args = parser.parse_args(argv)
    if args.plot is not None:
        return _plot(parser, args, console)

    try:
        trials = load_trials(args.results_dir)
        records = load_records(args.results_dir) if args.table == "search" else None
        tables = build_tables(trials, args.table, reference=not args.no_reference, records=records,
                              teachers=load_teachers(args.results_dir))
    except (FileNotFoundError, ValueError, OSError) as exc:
        parser.error(str(exc))
    if not tables and args.table == "search":
        parser.error(f"no searched sweep with a selection in {args.results_dir} (its search.json lists the "
                     "selected settings once the search has finished)")
    if not tables:
        n_done = int((trials["status"] == TrialStatus.COMPLETED).sum())
        parser.error(f"no completed trials fit the {args.table} table in {args.results_dir} "
                     f"({len(trials)} trials, {n_done} completed)")
    text = render(tables, args.fmt)
    if args.out is None:
        sys.stdout.write(text)
    else:
        target = open_storage(args.out)
        target.parent.write_text(target.name, text)
        print(f"wrote {len(tables)} {args.table} table(s) to {args.out}", file=sys.stderr)
    return 0


def _plot(parser: argparse.ArgumentParser, args: argparse.Namespace, console: _Console) -> int:
    if args.out is None:
        parser.error("--plot needs --out DIR, the folder the figures go to")
    try:
        load_trials(args.results_dir)
        open_storage(args.out)
    except (FileNotFoundError, ValueError, OSError) as exc:
        parser.error(str(exc))
    names = FIGURES if args.plot == "all" else (args.plot,)
    written = write_figures(args.results_dir, args.out, names)
    if not written:
        parser.error(f"no figure could be drawn from {args.results_dir}: " + "; ".join(console.lines))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
