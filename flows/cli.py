"""`undercurve` command line: run a flow, inspect the registry.

    undercurve run [CONFIG] [--flow pipeline|curate|train_eval|validate] [--set key=value ...]
    undercurve check [CONFIG] [--flow ...] [--set key=value ...]   validate settings, run nothing
    undercurve runs                                          list runs and their dashboard pages
    undercurve show RUN_ID                                   a run's artifacts and lineage
    undercurve compare                                       selection sizes per strategy across runs
    undercurve open RUN_ID [--browser]                       a run's page in the Prefect dashboard
    undercurve cache [prune --max-gb X | --older-than-days D | --all]   content-keyed results

Tables have colours on a terminal only (never with NO_COLOR); `--json` is for scripts.
Exit codes: 0 ok, 1 failed run / unknown run / missing registry, 2 bad settings or usage,
130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from typing import Annotated, NoReturn, Optional

import typer
import yaml
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tasks.links import flow_run_url

EXIT_BAD_SETTINGS = 2
EXIT_NOT_FOUND = 1

app = typer.Typer(
    name="undercurve", add_completion=False, no_args_is_help=True,
    pretty_exceptions_enable=False,  # --debug shows the plain traceback
    help="Run a flow, inspect the registry. Tables have colours on a terminal only (never with NO_COLOR); "
         "--json is for scripts. Exit codes: 0 ok; 1 failed run, unknown run or missing registry; "
         "2 bad settings or usage; 130 Ctrl-C; 143 SIGTERM.")


class Flow(str, Enum):
    pipeline = "pipeline"
    curate = "curate"
    train_eval = "train_eval"
    validate = "validate"


ConfigArg = Annotated[str, typer.Argument(help="YAML settings (validate takes its own, e.g. configs/validate_demo.yaml)")]
FlowOpt = Annotated[Flow, typer.Option(help="which flow")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="override a setting (repeatable)")]
DebugOpt = Annotated[bool, typer.Option(help="show tracebacks instead of one-line errors")]
RegistryOpt = Annotated[Optional[str], typer.Option(help="DuckDB file (default: from --config)")]
ReadConfigOpt = Annotated[str, typer.Option("--config", help="settings naming the registry")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON for scripts instead of tables")]
RunIdArg = Annotated[str, typer.Argument(help="a run id from `undercurve runs`")]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: the process's arguments); returns the exit code."""
    try:
        app(args=argv, prog_name="undercurve")
    except SystemExit as exc:  # click ends every command, even a successful one, this way
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def _fail(message: str, code: int) -> NoReturn:
    # plain print, not rich: one line however narrow the terminal, for people and for scripts
    print(f"undercurve: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _console() -> Console:
    """stdout for tables: colours on a terminal unless NO_COLOR is set; elsewhere (pipes, files)
    no escape codes and no wrapping at 80 columns, so each row stays one greppable line."""
    console = Console(color_system=None if os.environ.get("NO_COLOR") else "auto", highlight=False, markup=False)
    if not console.is_terminal:
        console.width = 100_000
    return console


# ------------------------------------------------------------------------------- run, check
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


def _checked(config: str, flow: Flow, sets: list[str] | None, debug: bool):
    """(overrides, settings), or exit 2 with one line naming what is wrong."""
    from undercurve.config import ConfigError

    try:
        overrides = _parse_set(sets or []) or None
        return overrides, check_settings(config, flow.value, overrides)
    except ConfigError as e:
        if debug:
            raise
        _fail(f"bad settings: {e}", EXIT_BAD_SETTINGS)


@app.command()
def check(config: ConfigArg = "configs/demo.yaml", flow: FlowOpt = Flow.pipeline, set_: SetOpt = None,
          debug: DebugOpt = False) -> None:
    """Validate a config (and --set overrides) without running anything."""
    _, settings = _checked(config, flow, set_, debug)
    print(f"{config}: settings are valid for the {flow.value} flow (run {settings.run_name!r}, "
          f"outputs under {settings.run_dir})")


@app.command()
def run(config: ConfigArg = "configs/demo.yaml", flow: FlowOpt = Flow.pipeline, set_: SetOpt = None,
        debug: DebugOpt = False) -> None:
    """Run a flow (default: the whole pipeline)."""
    overrides, settings = _checked(config, flow, set_, debug)
    from undercurve.watchdog import start_watchdog

    start_watchdog(str(settings.registry_path.resolve()))  # no child outlives this process
    try:
        _run(config, flow, overrides)
    except KeyboardInterrupt:
        _fail("cancelled", 130)
    except BaseException as exc:  # noqa: BLE001 - one line, the run's state is in the registry
        from undercurve.run import Cancelled, one_line

        if debug:
            raise
        if isinstance(exc, Cancelled):
            _fail(f"cancelled ({exc})", 143)
        _fail(f"run failed: {one_line(exc)}  (--debug for the traceback)", 1)


def _run(config: str, flow: Flow, overrides: dict | None) -> None:
    if flow is Flow.curate:
        from flows.curate import curate

        _print_summary(curate(config, overrides))
    elif flow is Flow.train_eval:
        from flows.train_eval import train_eval

        _print_comparison(train_eval(config, overrides))
    elif flow is Flow.validate:
        from flows.validate import validate

        out = validate(config, overrides)
        print("\n" + out["markdown"])
        print("outputs:", out["run_dir"])
    else:
        from flows.pipeline import pipeline

        out = pipeline(config, overrides)
        _print_summary(out["curate"])
        _print_comparison(out["train_eval"])


def _print_summary(summary: dict) -> None:
    from undercurve.registry import Registry

    console = _console()
    console.print(f"\nundercurve run {summary['run_id']} finished")
    console.print(_table("rows per stage", [{k: r[k] for k in ("stage", "rows_in", "kept", "set_aside")}
                                            for r in summary["stages"]]))
    lines = []
    if "accounting" in summary:
        lines.append(f"accounting: {json.dumps(summary['accounting'])}")
    lines.append(f"outputs:    {summary['run_dir']}")
    if summary.get("report"):
        lines.append(f"report:     {summary['report']} (rows per stage, set-aside reasons, what each strategy chose)")
    lines.append(f"registry:   {summary['registry']}")
    url = _run_row(Registry(summary["registry"]), summary["run_id"])["dashboard_url"]
    if url:
        lines.append(f"dashboard:  {url}")
    lines.append("selections (ms-swift JSONL; a `datasets` folder <strategy>.hf beside each):")
    lines += [f"  {strategy:<10} {path}" for strategy, path in summary["selections"].items()]
    for line in lines:
        console.print(line, soft_wrap=True)  # paths and URLs whole: the terminal wraps them, not rich


def _print_comparison(summary: dict) -> None:
    if summary.get("markdown"):
        print("\n" + summary["markdown"])
        print("report:", summary["md_path"], summary["csv_path"])


# ------------------------------------------------------------------ reading the registry
def _open_registry(path: str | None, config: str):
    """The registry named by --registry or the config; exit 1 if it does not exist (never created)."""
    from undercurve.config import ConfigError, load_settings
    from undercurve.registry import Registry, RegistryMissing

    try:
        reg = Registry(path or load_settings(config).registry_path)
    except RegistryMissing as e:
        _fail(f"{e} (a read command never creates one)", EXIT_NOT_FOUND)
    except ConfigError as e:
        _fail(f"bad settings: {e}", EXIT_BAD_SETTINGS)
    reg.reap_crashed()  # RUNNING runs whose owner is gone are CRASHED, and shown so
    return reg


def _with_dashboard_urls(runs: list[dict]) -> list[dict]:
    """Each run row plus ``dashboard_url`` (None where no Prefect flow run was recorded)."""
    return [{**r, "dashboard_url": flow_run_url(r["prefect_flow_run_id"])} for r in runs]


def _run_row(reg, run_id: str) -> dict:
    rows = reg.query("SELECT run_id, flow, run_name, status, reason, started_at, finished_at, code_version, "
                     "prefect_flow_run_id, summary_json FROM runs WHERE run_id = ?", [run_id]).to_dicts()
    if not rows:
        _fail(f"no run {run_id!r} in {reg.path}", EXIT_NOT_FOUND)
    return _with_dashboard_urls(rows)[0]


@app.command()
def runs(registry: RegistryOpt = None, config: ReadConfigOpt = "configs/demo.yaml", as_json: JsonOpt = False) -> None:
    """List runs: status (and why a run did not complete), code version, dashboard page."""
    reg = _open_registry(registry, config)
    rows = _with_dashboard_urls(reg.query(
        "SELECT run_id, flow, run_name, status, started_at, finished_at, code_version, reason, prefect_flow_run_id "
        "FROM runs ORDER BY started_at DESC").to_dicts())
    if as_json:
        _print_json({"runs": rows})
        return
    console = _console()
    # URLs below the table, not in a column: a column this wide would crush the others at 80 columns
    console.print(_table("runs", [{k: v for k, v in r.items() if k not in ("finished_at", "prefect_flow_run_id",
                                                                            "dashboard_url")} for r in rows]))
    pages = [r for r in rows if r["dashboard_url"]]
    if pages:
        console.print("dashboard (Prefect UI)", style="bold")
        for r in pages:
            # soft_wrap: a narrow terminal wraps the URL itself, rich does not break it into pieces
            console.print(Text.assemble(f"  {r['run_id']}  ", _text("dashboard_url", r["dashboard_url"])), soft_wrap=True)


@app.command()
def show(run_id: RunIdArg, registry: RegistryOpt = None, config: ReadConfigOpt = "configs/demo.yaml",
         as_json: JsonOpt = False) -> None:
    """A run: its state, dashboard page, rows per stage, artifacts, lineage, set-aside reasons."""
    reg = _open_registry(registry, config)
    run = _run_row(reg, run_id)
    tables = {
        "artifacts": reg.query("SELECT artifact_id, stage, kind, rows, path FROM artifacts WHERE run_id = ? "
                               "ORDER BY created_at", [run_id]),
        "lineage": reg.query("SELECT c.stage || ':' || c.kind AS child, p.stage || ':' || p.kind AS parent "
                             "FROM lineage l JOIN artifacts c ON c.artifact_id = l.child_id "
                             "JOIN artifacts p ON p.artifact_id = l.parent_id WHERE c.run_id = ?", [run_id]),
        "set_aside": reg.query("SELECT stage, reason, n FROM set_aside WHERE run_id = ? ORDER BY stage", [run_id]),
    }
    if as_json:
        _print_json({"run": [run], **{name: t.to_dicts() for name, t in tables.items()}})
        return
    console = _console()
    _print_run(console, run)
    summary = json.loads(run["summary_json"] or "{}")
    stages = summary.get("stages")
    if stages:
        console.print(_table("rows per stage", [{k: s.get(k) for k in ("stage", "rows_in", "kept", "set_aside")}
                                                for s in stages]))
    if summary.get("since_last_night"):
        _print_since_last_night(console, summary["since_last_night"])
    for name, t in tables.items():
        console.print(_table(name.replace("_", " "), t.to_dicts()))


@app.command()
def compare(registry: RegistryOpt = None, config: ReadConfigOpt = "configs/demo.yaml", as_json: JsonOpt = False) -> None:
    """Selections per strategy across runs: size and mean score."""
    reg = _open_registry(registry, config)
    rows = reg.query("SELECT r.run_name, s.run_id, s.strategy, count(*) AS n, avg(s.score) AS mean_score "
                     "FROM selections s JOIN runs r USING (run_id) GROUP BY ALL "
                     "ORDER BY r.run_name, s.strategy").to_dicts()
    if as_json:
        _print_json({"selections": rows})
    else:
        _console().print(_table("selections", rows))


@app.command("open")
def open_run(run_id: RunIdArg, registry: RegistryOpt = None, config: ReadConfigOpt = "configs/demo.yaml",
             browser: Annotated[bool, typer.Option("--browser", help="also open it in a web browser")] = False) -> None:
    """Print a run's page in the Prefect dashboard (PREFECT_UI_URL overrides where that is)."""
    import webbrowser

    url = _run_row(_open_registry(registry, config), run_id)["dashboard_url"]
    if url is None:
        _fail(f"run {run_id!r} has no Prefect flow run recorded (it was not started by a flow)", EXIT_NOT_FOUND)
    print(url)
    if browser:
        webbrowser.open(url)


# ------------------------------------------------------------------------------- rendering
_NO_WRAP = {"run_id", "artifact_id", "status", "started_at", "finished_at"}  # ids and times stay whole
_STATUS_STYLE = {"COMPLETED": "green", "RUNNING": "cyan", "CANCELLED": "yellow", "FAILED": "red", "CRASHED": "red"}


# ------------------------------------------------------------------ the result cache
cache_app = typer.Typer(no_args_is_help=False, help="Per-sample results keyed by content, shared by every run of "
                        "a workdir: show what is kept, prune it.")
app.add_typer(cache_app, name="cache")
CacheDirOpt = Annotated[Optional[str], typer.Option("--dir", help="cache folder (default: from --config)")]


def _cache_dir(directory: str | None, config: str):
    from pathlib import Path

    from undercurve.config import ConfigError, load_settings

    try:
        path = Path(directory) if directory else load_settings(config).cache_dir
    except ConfigError as e:
        _fail(f"bad settings: {e}", EXIT_BAD_SETTINGS)
    if not path.is_dir():
        _fail(f"no cache at {path} (nothing has been computed there yet)", EXIT_NOT_FOUND)
    return path


@cache_app.callback(invoke_without_command=True)
def cache(ctx: typer.Context, directory: CacheDirOpt = None, config: ReadConfigOpt = "configs/demo.yaml",
          as_json: JsonOpt = False) -> None:
    """What the cache holds: one row per kind of result and settings fingerprint."""
    if ctx.invoked_subcommand:
        return
    from undercurve.cache import describe

    rows = describe(_cache_dir(directory, config)).to_dicts()
    if as_json:
        _print_json({"cache": rows})
        return
    _console().print(_table("cache", rows))


@cache_app.command("prune")
def cache_prune(max_gb: Annotated[Optional[float], typer.Option(help="evict least recently used beyond this")] = None,
                older_than_days: Annotated[Optional[float], typer.Option(help="evict what no run used for this long")] = None,
                everything: Annotated[bool, typer.Option("--all", help="evict everything")] = False,
                directory: CacheDirOpt = None, config: ReadConfigOpt = "configs/demo.yaml",
                as_json: JsonOpt = False) -> None:
    """Evict results; the next run recomputes what it needs of them."""
    from undercurve.cache import prune

    if max_gb is None and older_than_days is None and not everything:
        _fail("say what to prune: --max-gb, --older-than-days or --all", EXIT_BAD_SETTINGS)
    out = prune(_cache_dir(directory, config), max_bytes=0 if everything else
                (None if max_gb is None else int(max_gb * 2**30)),
                older_than_s=None if older_than_days is None else older_than_days * 86400)
    if as_json:
        _print_json({"pruned": [out]})
        return
    _console().print(_table("pruned", [out]))


def _print_json(tables: dict[str, list[dict]]) -> None:
    print(json.dumps(tables, default=str, indent=1))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M")  # to the minute: --json has the exact time
    return str(value)


def _text(column: str, value) -> Text:
    # plain Text: "[...]" in a path or a reason is text, never rich markup
    style = _STATUS_STYLE.get(value, "") if column == "status" else ""
    if column == "dashboard_url" and value:
        style = f"link {value}"
    return Text(_cell(value), style=style)


def _table(title: str, rows: list[dict]) -> Table | Text:
    if not rows:
        return Text(f"{title}: none")
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for name in rows[0]:
        numeric = any(isinstance(r[name], (int, float)) and not isinstance(r[name], bool) for r in rows)
        table.add_column(name, justify="right" if numeric else "left", overflow="fold", no_wrap=name in _NO_WRAP)
    for r in rows:
        table.add_row(*(_text(k, v) for k, v in r.items()))
    return table


def _print_since_last_night(console: Console, diff: dict) -> None:
    """A curate run's ``since_last_night`` summary (``undercurve.nightly``)."""
    prev = diff.get("previous")
    if "error" in diff:
        console.print(Text(f"since last night: not computed: {diff['error']}"))
        return
    if prev is None:
        console.print(Text(f"since last night: first night of the series {diff['series']!r}"))
    else:
        rows = diff["rows"]
        said = (f"not compared: {rows['unavailable']}" if rows.get("by") is None else
                f"{rows['new']} new, {rows['removed']} removed, {rows['kept']} kept (by {rows['by']})")
        console.print(Text(f"since last night (run {prev['run_id']}, {prev['run_name']}): rows {said}"))
        console.print(_table("selection churn since last night", diff["selections"]))
    console.print(_table("contamination found (this night vs last)", diff["contamination"]))


def _print_run(console: Console, run: dict) -> None:
    """One run as key/value lines, its dashboard page last and whole (clickable when wrapped)."""
    keys = ("run_id", "flow", "run_name", "status", "reason", "started_at", "finished_at", "code_version")
    card = Table.grid(padding=(0, 2))
    card.add_column(style="bold", min_width=len("code_version"))
    card.add_column(overflow="fold")
    for key in keys:
        card.add_row(key, _text(key, run[key]))
    console.print(card)
    page = _text("dashboard_url", run["dashboard_url"]) if run["dashboard_url"] else "(no Prefect flow run recorded)"
    console.print(Text.assemble(("dashboard".ljust(len("code_version") + 2), "bold"), page, "\n"), soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
