"""`harness guard tune` and `harness guard score`: the collapse guard on recorded runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.errors import UserError

guard_app = typer.Typer(
    help="The collapse guard on recorded runs: tune its rule on naive traces, score it on "
    "others (docs/guard.md). No training.", no_args_is_help=True)

Runs = Annotated[list[Path], typer.Argument(
    help="Run directories (cells/*/trace.jsonl) or cell directories.", show_default=False)]
Controller = Annotated[str, typer.Option(
    "--controller", help="Use the cells whose controller is this one ('any': all). A "
    "controller that stops campaigns early leaves those campaigns out.")]
Method = Annotated[str | None, typer.Option(
    "--method", help="Only the cells of this method: its label in the spec (e.g. "
    "reinforce-kl), or its name where it has none. Default: every method.",
    show_default=False)]
Seeds = Annotated[str | None, typer.Option(
    "--seeds", help="Only these seeds: a comma-separated list or a range a-b.",
    show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
MinLead = Annotated[int, typer.Option(
    "--min-lead", min=0, help="Steps before the onset that count as caught.")]


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            if b and int(b) < int(a):
                raise ValueError
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise UserError(f"--seeds {text!r}: use a list like 0,1,2 or a range like 0-5") from None
    return out


def _campaigns(runs: list[Path], controller: str, seeds: str | None,
               method: str | None = None) -> list[Any]:
    from harness.guard.score import load_campaigns

    try:
        cs = load_campaigns(runs, None if controller == "any" else controller, _seeds(seeds),
                            method)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if not cs:
        among = ("" if method is None else f" of method {method!r}") + (
            "" if seeds is None else f" with seeds {seeds}")
        raise UserError(f"no finished campaign of controller {controller!r}{among} in "
                        f"{', '.join(map(str, runs))}: point at runs with such cells, or "
                        f"pass --controller any" + ("" if method is None else
                                                    " or another --method") +
                        ("" if seeds is None else " or other --seeds"))
    return cs


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _print_totals(t: dict[str, Any]) -> None:
    print(f"campaigns {t['campaigns']}: {t['signature']} with the signature, "
          f"{t['no_signature']} without")
    print(f"caught {t['caught']}, late {t['late']}, missed {t['missed']}, false alarms "
          f"{t['false_alarm']}, quiet {t['quiet']}; caught share {_fmt(t['caught_share'])}, "
          f"false-alarm share {_fmt(t['false_alarm_share'])}; lead time mean "
          f"{_fmt(t['mean_lead_time'])}, median {_fmt(t['median_lead_time'])} steps; fired "
          f"before the peak in {t['before_peak']} signature campaigns")


def _on(params: dict[str, Any]) -> str:
    from harness.guard.tune import OFF

    on = ", ".join(f"{k}={v}" for k, v in params.items() if k in OFF and v is not None)
    extra = {k: params[k] for k in ("drop_delta", "slope_window")
             if params.get("drop_confidence" if k == "drop_delta" else "entropy_slope")
             is not None}
    on += "".join(f", {k}={v}" for k, v in extra.items())
    arm = "" if params.get("min_rise") is None else f", min_rise {params['min_rise']}"
    return f"{on or 'every signal off'} (min_step {params['min_step']}{arm})"


@guard_app.command()
def score(runs: Runs, params: Annotated[Path | None, typer.Option(
              "--params", help="Guard parameters (JSON: a `harness guard tune --out` file, or "
              "an object of GuardParams fields); default: the tuned defaults.",
              show_default=False)] = None,
          controller: Controller = "naive", method: Method = None, seeds: Seeds = None,
          min_lead: MinLead = 2, as_json: AsJson = False) -> None:
    """Score the guard on recorded campaigns: per campaign, signature or not, onset, trigger
    step, lead time and outcome (caught / late / missed / false alarm / quiet); totals."""
    from pydantic import ValidationError

    from harness.guard.rule import as_params
    from harness.guard.score import score as run_score

    p: Any = None
    if params is not None:
        try:
            doc = json.loads(params.read_text())
            p = as_params(doc.get("params", doc) if isinstance(doc, dict) else doc)
        except (OSError, json.JSONDecodeError, ValidationError, TypeError) as e:
            first = str(e).strip().splitlines()[0]
            if isinstance(e, ValidationError):
                err = e.errors()[0]
                first = f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
            raise UserError(f"--params {params}: not guard parameters ({first}); write the "
                            f"file with `harness guard tune --out`") from None
    out = run_score(_campaigns(runs, controller, seeds, method), p, min_lead=min_lead)
    if as_json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    print(f"guard: {_on(out['params'])}")
    print(f"{'campaign':<44} {'sig':>3} {'peak':>4} {'onset':>5} {'fired':>5} {'lead':>4}  "
          "outcome")
    for r in out["campaigns"]:
        print(f"{r['source'][:40] + ':c' + str(r['index']):<44} {'yes' if r['signature'] else 'no':>3}"
              f" {r['peak_step']:>4} {_fmt(r['onset']):>5} {_fmt(r['trigger_step']):>5} "
              f"{_fmt(r['lead_time']):>4}  {r['outcome']}")
    _print_totals(out["totals"])


@guard_app.command()
def tune(runs: Runs, out: Annotated[Path | None, typer.Option(
             "--out", help="Write the chosen parameters (and their scores) here as JSON.",
             show_default=False)] = None,
         controller: Controller = "naive", method: Method = None, seeds: Seeds = None,
         min_lead: MinLead = 2, max_signals: Annotated[int, typer.Option(
             "--max-signals", min=1, max=4, help="Signals a rule may combine.")] = 2,
         max_false_alarms: Annotated[float, typer.Option(
             "--max-false-alarms", min=0.0, max=1.0,
             help="Largest share of campaigns without the signature it may fire on.")] = 0.10,
         as_json: AsJson = False) -> None:
    """Fit the guard's rule on recorded traces without retraining: of the rules that combine
    up to `--max-signals` signals, the one that catches the most signature campaigns (fired
    `--min-lead` steps or more before the onset) while firing on at most
    `--max-false-alarms` of the others; ties go to fewer false alarms, then the longer median
    lead, then fewer signals."""
    from harness.guard.tune import tune as run_tune

    res = run_tune(_campaigns(runs, controller, seeds, method), max_signals=max_signals,
                   max_false_alarm_share=max_false_alarms, min_lead=min_lead)
    if out is not None:
        from harness.rundir import write_json

        if out.is_dir():
            raise UserError(f"--out {out} is a directory; name the JSON file to write, e.g. "
                            f"{out / 'guard.json'}")
        write_json(out, res)  # atomic: a failed write leaves no half file
    if as_json:
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
        return
    print(f"searched {res['searched']} rules; chosen: {_on(res['params'])}")
    _print_totals(res["totals"])
    for size, best in res["by_size"].items():
        t = best["totals"]
        print(f"  best with {size} signal(s): {_on(best['params'])}: caught {t['caught']}/"
              f"{t['signature']}, false alarms {t['false_alarm']}/{t['no_signature']}, "
              f"median lead {_fmt(t['median_lead_time'])}")
    print("trade-off (false alarms -> most caught):", ", ".join(
        f"{f['false_alarms']} -> {f['caught']}" for f in res["front"]))
    if out is not None:
        print(f"parameters written to {out} (use: harness guard score RUN --params {out})")
