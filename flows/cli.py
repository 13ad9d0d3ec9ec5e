"""`undercurve` command line: run a flow, inspect the registry.

    undercurve run [CONFIG] [--flow pipeline|curate|train_eval|validate] [--set key=value ...]
    undercurve check [CONFIG] [--flow ...] [--set key=value ...]   validate settings, run nothing
    undercurve runs                                          list runs
    undercurve show RUN_ID                                   a run's artifacts and lineage
    undercurve compare                                       selection sizes per strategy across runs
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml


EXIT_BAD_SETTINGS = 2


def _parse_set(items: list[str]) -> dict:
    from undercurve.config import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value  # a plain string such as "a: b" that YAML reads as a mapping error
    return out


def check_settings(config: str | None, flow: str, overrides: dict | None):
    """Validate the whole config for ``flow`` before anything starts (no server, no model)."""
    if flow == "validate":
        from undercurve.validation.config import load_validate_settings

        return load_validate_settings(config, overrides)
    from undercurve.config import load_settings

    return load_settings(config, overrides)


def _registry(path: str | None, config: str | None):
    from undercurve.config import load_settings
    from undercurve.registry import Registry

    return Registry(path or load_settings(config).registry_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="undercurve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a flow (default: the whole pipeline)")
    run.add_argument("config", nargs="?", default="configs/demo.yaml")
    run.add_argument("--flow", choices=["pipeline", "curate", "train_eval", "validate"], default="pipeline",
                     help="validate takes its own config, e.g. configs/validate_demo.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    run.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    chk = sub.add_parser("check", help="validate a config (and --set overrides) without running anything")
    chk.add_argument("config", nargs="?", default="configs/demo.yaml")
    chk.add_argument("--flow", choices=["pipeline", "curate", "train_eval", "validate"], default="pipeline")
    chk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    chk.add_argument("--debug", action="store_true")
    for name in ("runs", "show", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--registry", help="DuckDB file (default: from --config)")
        p.add_argument("--config", default="configs/demo.yaml")
        p.add_argument("--json", action="store_true", help="JSON for scripts instead of tables")
        if name == "show":
            p.add_argument("run_id")
    args = ap.parse_args(argv)

    if args.cmd in ("run", "check"):
        from undercurve.config import ConfigError

        try:
            overrides = _parse_set(args.set) or None
            settings = check_settings(args.config, args.flow, overrides)
        except ConfigError as e:
            if args.debug:
                raise
            print(f"undercurve: bad settings: {e}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
        if args.cmd == "check":
            print(f"{args.config}: settings are valid for the {args.flow} flow (run {settings.run_name!r}, "
                  f"outputs under {settings.run_dir})")
            return 0
        from undercurve.watchdog import start_watchdog

        start_watchdog(str(settings.registry_path.resolve()))  # no child outlives this process
        try:
            _run(args, overrides)
        except KeyboardInterrupt:
            print("undercurve: cancelled", file=sys.stderr)
            return 130
        except BaseException as exc:  # noqa: BLE001 - one line, the run's state is in the registry
            from undercurve.run import Cancelled, one_line

            if args.debug:
                raise
            if isinstance(exc, Cancelled):
                print(f"undercurve: cancelled ({exc})", file=sys.stderr)
                return 143
            print(f"undercurve: run failed: {one_line(exc)}  (--debug for the traceback)", file=sys.stderr)
            return 1
        return 0

    import polars as pl

    pl.Config.set_tbl_rows(200)
    pl.Config.set_fmt_str_lengths(80)
    from undercurve.registry import RegistryMissing

    try:
        reg = _registry(args.registry, args.config)
    except RegistryMissing as e:
        print(f"undercurve: {e} (a read command never creates one)", file=sys.stderr)
        return 1
    reg.reap_crashed()  # RUNNING runs whose owner is gone are CRASHED, and shown so
    if args.cmd == "show" and reg.query("SELECT 1 FROM runs WHERE run_id = ?", [args.run_id]).height == 0:
        print(f"undercurve: no run {args.run_id!r} in {reg.path}", file=sys.stderr)
        return 1
    tables = _read_tables(reg, args)
    if args.json:
        print(json.dumps({name: t.to_dicts() for name, t in tables.items()}, default=str, indent=1))
    else:
        for t in tables.values():
            print(t)
    return 0


def _read_tables(reg, args) -> dict:
    if args.cmd == "runs":
        return {"runs": reg.query("SELECT run_id, flow, run_name, status, started_at, finished_at, code_version, "
                                  "reason FROM runs ORDER BY started_at DESC")}
    if args.cmd == "show":
        return {
            "run": reg.query("SELECT run_id, flow, status, reason, summary_json FROM runs WHERE run_id = ?", [args.run_id]),
            "artifacts": reg.query("SELECT artifact_id, stage, kind, rows, path FROM artifacts WHERE run_id = ? "
                                   "ORDER BY created_at", [args.run_id]),
            "lineage": reg.query("SELECT c.stage || ':' || c.kind AS child, p.stage || ':' || p.kind AS parent "
                                 "FROM lineage l JOIN artifacts c ON c.artifact_id = l.child_id "
                                 "JOIN artifacts p ON p.artifact_id = l.parent_id WHERE c.run_id = ?", [args.run_id]),
            "set_aside": reg.query("SELECT stage, reason, n FROM set_aside WHERE run_id = ? ORDER BY stage", [args.run_id]),
        }
    return {"selections": reg.query("SELECT r.run_name, s.run_id, s.strategy, count(*) AS n, avg(s.score) AS mean_score "
                                    "FROM selections s JOIN runs r USING (run_id) GROUP BY ALL "
                                    "ORDER BY r.run_name, s.strategy")}


def _run(args, overrides: dict | None) -> None:
    if args.flow == "curate":
        from flows.curate import curate

        _print_summary(curate(args.config, overrides))
    elif args.flow == "train_eval":
        from flows.train_eval import train_eval

        _print_comparison(train_eval(args.config, overrides))
    elif args.flow == "validate":
        from flows.validate import validate

        out = validate(args.config, overrides)
        print("\n" + out["markdown"])
        print("outputs:", out["run_dir"])
    else:
        from flows.pipeline import pipeline

        out = pipeline(args.config, overrides)
        _print_summary(out["curate"])
        _print_comparison(out["train_eval"])


def _print_summary(summary: dict) -> None:
    print("\nundercurve run", summary["run_id"], "finished")
    print(f"{'stage':<22}{'in':>8}{'kept':>8}{'aside':>8}")
    for row in summary["stages"]:
        print(f"{row['stage']:<22}{row['rows_in']:>8}{row['kept']:>8}{row['set_aside']:>8}")
    if "accounting" in summary:
        print("accounting:", json.dumps(summary["accounting"]))
    print("outputs: ", summary["run_dir"])
    if summary.get("report"):
        print("report:  ", summary["report"], "(rows per stage, set-aside reasons, what each strategy chose)")
    print("registry:", summary["registry"])
    for strategy, path in summary["selections"].items():
        print(f"  {strategy:<10} {path}")


def _print_comparison(summary: dict) -> None:
    if summary.get("markdown"):
        print("\n" + summary["markdown"])
        print("report:", summary["md_path"], summary["csv_path"])


if __name__ == "__main__":
    sys.exit(main())
