"""The report's text: its tables (rows of strings from the run's data) and `Doc`, the report
as a list of blocks rendered to Markdown (figures linked in `report_figures/`) and to a
self-contained HTML page (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.report.data import RunData
from harness.stats import ci_label

FIG_DIR = "report_figures"


# --------------------------------------------------------------------------- tables
def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci_txt(ci: tuple[float, float, float] | None) -> tuple[str, str]:
    if ci is None:
        return "-", "-"
    return _f(ci[0]), f"[{_f(ci[1])}, {_f(ci[2])}]"


def arms_table(run: RunData) -> tuple[list[str], list[list[str]], list[int]]:
    """The `arm` and `oracle` rows of `arms` (and the indices of the oracle rows)."""
    head = ["model", "method", "controller", "seeds", "test p@1", "eval p@1", "mean peak",
            "mean gap", "collapsed", "signature"]
    rows: list[list[str]] = []
    refs = []
    for r in run.results.get("arms") or []:
        seeds = f"{r['n']}/{r['n_cells']}"
        if r["kind"] == "arm":
            rows.append([r["model"], r["method"], r["controller"], seeds, _f(r["pass1_test"]),
                         _f(r["pass1_eval"]), _f(r.get("mean_peak")), _f(r.get("mean_gap")),
                         f"{r['collapsed_campaigns']}/{r['campaigns']}" if r.get("campaigns")
                         else "-",
                         f"{r.get('signature_campaigns', 0)}/{r['campaigns']}"
                         if r.get("campaigns") else "-"])
        elif r["kind"] == "oracle":
            refs.append(len(rows))
            rows.append([r["model"], r["method"], f"* {r['controller']} of {r['of']}", seeds,
                         _f(r["pass1_test"]), _f(r["pass1_eval"]), "", "", "", ""])
    return head, rows, refs


def guard_table(run: RunData) -> tuple[list[str], list[list[str]]]:
    """The offline guard on the naive arms, scored as `harness guard score` scores it (the
    study's signature, caught = fired at least 2 steps before the onset); results written
    before those scores existed are shown by the collapse threshold instead."""
    found = [r for r in run.results.get("arms") or [] if r["kind"] == "guard_lead_time"]
    if all(r.get("by_signature") for r in found):
        head = ["model", "method", "on", "seeds", "campaigns", "signature", "caught", "late",
                "missed", "false alarms", "median lead time (steps)"]
        return head, [[r["model"], r["method"], r["of"], f"{r['n']}/{r['n_cells']}",
                       str(b["campaigns"]), str(b["signature"]), str(b["caught"]),
                       str(b["late"]), str(b["missed"]),
                       f"{b['false_alarm']}/{b['no_signature']}", _f(b["median_lead_time"], 1)]
                      for r in found for b in [r["by_signature"]]]
    head = ["model", "method", "on", "seeds", "campaigns", "collapsed", "caught", "late",
            "missed", "false alarms", "mean lead time (steps)"]
    return head, [[r["model"], r["method"], r["of"], f"{r['n']}/{r['n_cells']}",
                   str(r["campaigns"]), str(r["collapsed"]), str(r["caught"]), str(r["late"]),
                   str(r["missed"]), str(r["false_alarms"]), _f(r["mean_lead_time"], 1)]
                  for r in found]


def end_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[int]]:
    head = ["arm", "seeds", "test p@1", "test 95% CI", "eval p@1", "eval 95% CI"]
    out = [[r["label"], f"{r['n']}/{r['n_cells']}", *_ci_txt(r["test_ci"]),
            *_ci_txt(r["eval_ci"])] for r in rows]
    return head, out, [i for i, r in enumerate(rows) if r["oracle"]]


def cells_table(run: RunData) -> tuple[list[str], list[list[str]]]:
    head = ["cell", "seed", "status", "test p@1", "eval p@1", "campaigns", "collapsed",
            "signature"]
    rows = []
    for c in run.cells:
        eoc = c.entry.get("end_of_chain") or {}
        camps = c.campaigns or c.entry.get("campaigns") or []
        rows.append([c.entry.get("cell_id", "?"), str(c.seed), c.entry.get("status", "?"),
                     _f(eoc.get("pass1_test")), _f(eoc.get("pass1_eval")), str(len(camps)),
                     str(sum(1 for k in camps if k.get("collapsed"))),
                     str(sum(1 for k in camps if k.get("signature")))])
    return head, rows


def comparison_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    out = []
    for r in rows:
        ci = "-" if r.get("ci_low") is None else f"[{_f(r['ci_low'])}, {_f(r.get('ci_high'))}]"
        wins = "-" if r.get("wins") is None else f"{r['wins']}/{r.get('n', '?')}"
        p = r.get("p_value")
        out.append([str(r.get("model", "")), str(r.get("candidate", "")),
                    str(r.get("baseline", "")), str(r.get("metric", "")),
                    str(r.get("expect", "")), "yes" if r.get("gate") else "no",
                    str(r.get("n", "-")), _f(r.get("mean_diff")), ci, wins,
                    "-" if p is None else f"{p:.3g}", str(r.get("verdict", "")),
                    str(r.get("outcome", "")), str(r.get("reason", ""))])
    return ["model", "candidate", "baseline", "metric", "expect", "gate", "n", "mean diff",
            ci_label(rows), "wins", "p", "verdict", "outcome", "reason"], out


# --------------------------------------------------------------------------- document
@dataclass
class Doc:
    """A report as a list of blocks, rendered to Markdown and to HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, head: list[str], rows: list[list[str]], refs: Sequence[int] = ()) -> None:
        """`refs`: indices of reference rows (oracles), set apart in the HTML."""
        self.blocks.append(("table", (head, rows, set(refs))))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("fig", (name, png, caption)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h":
                out += [f"## {b}", ""]
            elif kind == "p":
                out += [b, ""]
            elif kind == "ul":
                out += [f"- {x}" for x in b] + [""]
            elif kind == "table":
                head, rows, _ = b
                cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                out.append("| " + " | ".join(cell(h) for h in head) + " |")
                out.append("|" + "|".join(" --- " for _ in head) + "|")
                out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
                out.append("")
            else:
                name, _, caption = b
                out += [f"![{name}]({FIG_DIR}/{name}.png)", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "h":
                body.append(f"<h2>{e(b)}</h2>")
            elif kind == "p":
                body.append(f"<p>{e(b)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                head, rows, refs = b
                trs = "".join(
                    ('<tr class="ref">' if i in refs else "<tr>")
                    + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>"
                    for i, r in enumerate(rows))
                body.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head)
                            + f"</tr></thead><tbody>{trs}</tbody></table>")
            else:
                name, png, caption = b
                data = base64.b64encode(png).decode("ascii")
                body.append(f'<figure id="{e(name)}"><img alt="{e(name)}" '
                            f'src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(caption)}</figcaption></figure>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(self.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;"
    "margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;font-size:.86em;margin:.6em 0}"
    "th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left}"
    "th{background:#f2f2f2}tr.ref td{color:#666;font-style:italic;background:#fafafa}"
    "figure{margin:1em 0}img{max-width:100%;height:auto}"
    "figcaption{font-size:.88em;color:#444;max-width:62em}"
)


def _environment_lines(env: dict[str, Any]) -> list[str]:
    if not env:
        return ["environment.json is missing"]
    pk = env.get("packages") or {}
    cpu = env.get("cpu") or {}
    lines = [
        f"harness {env.get('harness_version', '?')}, git commit {env.get('git_commit') or '?'}",
        f"Python {env.get('python', '?')} on {env.get('platform', '?')}",
        f"CPU: {cpu.get('model', '?')} x {cpu.get('count', '?')}; torch threads "
        f"{env.get('torch_threads', '?')}; GPU: "
        + (", ".join(env["gpu"]) + f" (CUDA {env.get('cuda')})" if env.get("gpu") else "none"),
    ]
    if pk:
        lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())))
    return lines
