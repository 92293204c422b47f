"""The `sensitivity` command: run, validate, optimizers, plot, compact.

Exit codes:

- 0: success. `run`: every trial of this run finished (ok or diverged), or nothing was left to run.
- 1: failure. `run`: a trial of this run errored (each distinct error is printed with its count),
  trials did not finish (run the same command again to resume), the Ray cluster at --address
  did not answer, or the run was interrupted.
- 2: bad input, one line on stderr: the study file, an option, dataset files missing on a local
  run, a --storage or results URI that pyarrow cannot use, a results directory that `plot` cannot read,
  a table or part file that is not readable parquet (`run`, `compact` and `plot` name it, before
  anything is written).

`validate` and `optimizers` import neither torch nor ray.
"""

from __future__ import annotations

import argparse
import sys

from sensitivity import checks


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (its default prints usage first) and takes no abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --smok is an error, not --smoke
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bad(message: str) -> int:
    print(f"sensitivity: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in front of the message)."""
    try:
        value: object = int(text)
    except ValueError:
        value = text
    return checks.integer("", value, low=1, error=argparse.ArgumentTypeError)


def _version() -> str:
    from sensitivity import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sensitivity", description="Hyperparameter sensitivity studies on Ray Tune.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a study (only its trials not yet in the results)")
    run.add_argument("study", help="study YAML file")
    run.add_argument("--out", default="results", help="results root; tables go to OUT/<study name>/ (default: results)")
    run.add_argument("--address", help="join a running Ray cluster (e.g. auto or HOST:6379) instead of starting Ray")
    run.add_argument("--storage", help="results and Ray state go to URI/<study name>/ (s3://, gs://, or a shared path)")
    run.add_argument("--smoke", action="store_true", help="1 epoch, tiny data, 1 seed, at most 2 lr: try a study fast")
    run.add_argument("--max-concurrent", type=_positive_int, help="at most N trials at once")
    run.add_argument("--retry-errors", action="store_true", help="run trials that ended with status error again")
    run.add_argument("--quiet", action="store_true", help="no progress line or summary")
    run.add_argument("--fuse", help="fused trial arrays: auto, off or N members at most (overrides the study's fuse)")

    validate = sub.add_parser("validate", help="check a study file and print its trial counts (no torch, no Ray)")
    validate.add_argument("study")
    validate.add_argument("--smoke", action="store_true", help="count the --smoke trials")

    sub.add_parser("optimizers", help="list optimizer names, hyperparameters and defaults")

    compact = sub.add_parser("compact", help="fold a study's part files into trials.parquet and curves.parquet")
    compact.add_argument("results", help="a study's results directory or URI (OUT/<study name>)")

    plot = sub.add_parser("plot", help="figures and tables of a results directory")
    plot.add_argument("results", help="a study's results directory or URI (OUT/<study name>, or a --storage "
                                      "URI/<study name>), or its trials.parquet")
    plot.add_argument("--out", help="where figures go (default: RESULTS/figures; for a URI, ./<study name>/figures)")
    return parser


def _validate(args) -> int:
    from sensitivity.study import load_study

    study = load_study(args.study)
    counts = study.counts(smoke=args.smoke)
    mode = (f"optuna search ({study.search.sampler}, {study.search_trials(args.smoke)} points per entry "
            f"x {len(study.seeds(args.smoke))} seeds)" if study.search else "grid")
    print(f"{study.name}: valid, {mode}")
    names = [f"[{i}] {study.label(i)}" for i in range(len(counts))]
    width = max(len(n) for n in names + ["total"])
    for name, count in zip(names, counts):
        print(f"  {name:<{width}}  {count:>6} trials")
    print(f"  {'total':<{width}}  {sum(counts):>6} trials")
    for line in study.smoke_merges() if args.smoke else ():  # entries --smoke makes one: why one counts 0
        print(f"  {line}")
    if study.refine:
        r = study.refine
        extra = sum(study.refine_counts(smoke=args.smoke))
        print(f"  refine: {r.rounds} rounds to {r.resolution:g} decades (tolerance {r.tolerance:g} on {r.metric}): "
              f"up to {extra} more trials, at most {sum(counts) + extra} trials")
    from sensitivity.preflight import missing_data

    for line in missing_data(study, args.smoke):  # a cluster's workers may hold the files: a warning only
        print(f"sensitivity: warning: {line}", file=sys.stderr)
    return 0


def _optimizers(args) -> int:
    from sensitivity.catalog import available

    for name, info in available().items():
        params = ", ".join(f"{k}={v!r}" for k, v in info.hyperparameters.items())
        tags = [t for t, on in (("HD", info.is_hd), ("closure", info.needs_closure)) if on]
        print(f"{name}{' [' + ', '.join(tags) + ']' if tags else ''}: {info.description}")
        print(f"    {params}")
        print(f"    paper: {info.paper}")
    return 0


def _run(args) -> int:
    from sensitivity.study import load_study

    study = load_study(args.study)  # bad input fails here, before Ray starts
    if args.fuse is not None:
        study.set_fuse(args.fuse)
    for line in study.smoke_merges() if args.smoke and not args.quiet else ():
        print(f"{study.name}: {line}", file=sys.stderr)
    from sensitivity.lease import Lease, study_location

    with Lease(study_location(args.out, args.storage, study.name)) as lease:  # held: exit 2, before slow imports
        if lease.note:
            print(lease.note, file=sys.stderr)
        from sensitivity.preflight import check_local_data, finish, plan_run
        from sensitivity.results import ResultsStore

        store = ResultsStore(lease.location)
        store.guard = lease.check
        plan = plan_run(study, store, args.smoke, args.retry_errors)  # the smoke guard first: nothing written before
        if plan.rewritten and not args.quiet:
            print(f"{study.name}: {plan.rewritten} stored rows given their current id or canonical spelling "
                  f"(nothing rerun)")
        if not plan.left:
            finish(plan)
            _nothing_left(study, plan, args)
            return 0
        check_local_data(study, args.smoke, args.address)  # before Ray is even imported
        from sensitivity.sweep.startup import Background

        # the optimizers' own range checks (torch) while Ray starts; bad input stops the run before any trial
        checks = Background(study.check_optimizers, args.smoke)
        plan.checked = True
        from sensitivity.sweep import run_study

        summary = run_study(study, out=args.out, address=args.address, storage=args.storage, smoke=args.smoke,
                            max_concurrent=args.max_concurrent, quiet=args.quiet, retry_errors=args.retry_errors,
                            plan=plan, lease=lease, checks=checks)
    if not args.quiet:
        how = [f"{summary.fused} in {summary.arrays} fused arrays"] if summary.fused else []
        if summary.ran > summary.fused:
            how.append(f"{summary.ran - summary.fused} alone, {summary.bundle} per Ray trial")
        print(f"{study.name}: ran {summary.ran} trials ({summary.diverged} diverged, {summary.errored} errored)"
              f" in {summary.elapsed_s:.1f} s; {summary.skipped} already done"
              + "".join(f"; {h}" for h in how))
        print(f"  trials: {summary.trials_path}")
        print(f"  curves: {summary.curves_path}")
        if summary.stale:
            print(f"  {summary.stale} stale rows (an earlier version of the study) kept in the table; "
                  f"analysis leaves them out (include_stale=True brings them back)")
    if summary.mirror_failures:
        print(f"sensitivity: {summary.mirror_failures} checkpoint upload(s) failed (trials went on; a lost worker "
              f"restarts them from scratch); first: {summary.mirror_error}", file=sys.stderr)
    _report_errors(summary.failures, plan.errored, args)
    if summary.missing:
        first = f"; first Ray error: {summary.errors[0]}" if summary.errors else ""
        print(f"sensitivity: {summary.missing} of {summary.total} trials did not finish{first}; "
              f"run the same command again to resume", file=sys.stderr)
        return 1
    return 1 if summary.errored else 0


def _nothing_left(study, plan, args) -> None:
    """Say that nothing was left to run (the tables are compacted and current.json written)."""
    if not args.quiet:
        print(f"{study.name}: nothing to run; all {plan.total} trials are in {plan.location}")
        stale = plan.current.stale()
        if stale:
            print(f"  {stale} stale rows (an earlier version of the study) kept in the table; "
                  f"analysis leaves them out (include_stale=True brings them back)")
    _report_errors([], plan.errored, args)


def _report_errors(failures, earlier: int, args) -> None:
    """Each distinct error of this run (count, a trial), and the errored rows of earlier runs kept."""
    for message, count, trial in failures:
        print(f"sensitivity: {count} trial(s) errored (e.g. trial {trial}): {message}", file=sys.stderr)
    if earlier and not args.retry_errors:
        print(f"sensitivity: {earlier} trial(s) errored in an earlier run and were not run again; "
              f"--retry-errors runs them", file=sys.stderr)


def _compact(args) -> int:
    from sensitivity.lease import Lease
    from sensitivity.results import CURVES, TRIALS, ResultsStore
    from sensitivity.storage import join

    with Lease(args.results) as lease:  # a writer like a run: never beside one (held: exit 2 naming the holder)
        if lease.note:
            print(lease.note, file=sys.stderr)
        store = ResultsStore(args.results)
        store.check()  # a corrupt table or part: exit 2 naming it, before anything is rewritten
        if not store.has_tables:
            return _bad(f"results: no trials.parquet and no parts in {args.results}")
        store.guard = lease.check
        store.compact()
    # named as given (a URI keeps its scheme and query)
    print(f"{len(store.done_ids())} trials in {join(args.results, TRIALS)} and {join(args.results, CURVES)}")
    return 0


def _plot(args) -> int:
    from pathlib import Path

    from analysis.location import figures_dir, is_uri
    from analysis.report import write_report

    try:
        out = Path(args.out) if args.out else figures_dir(args.results)
        write_report(args.results, out)  # prints each file and a summary
    except ValueError as exc:  # analysis.ResultsError: a bad URI, or a missing, empty or all-errored results directory
        return _bad(exc)
    if is_uri(args.results) and not args.out:  # figures are local files, wherever the tables are
        print(f"figures of {args.results} are in {out.resolve()} (--out DIR puts them elsewhere)")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from sensitivity.storage import CorruptTableError, LocationError, ResultsWriteError
    from sensitivity.study import StudyError

    handler = {"run": _run, "validate": _validate, "optimizers": _optimizers, "plot": _plot,
               "compact": _compact}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("sensitivity: interrupted; run the same command again to resume", file=sys.stderr)
        return 1
    except (StudyError, CorruptTableError, LocationError) as exc:  # bad input, one line: a field, file, URI, held lease
        return _bad(exc)
    except ResultsWriteError as exc:  # a read-only or full destination: one line naming the path
        print(f"sensitivity: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failure, not the user's input
        print(f"sensitivity: failed: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
