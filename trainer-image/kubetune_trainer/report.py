"""The human-facing results: loss-curve PNG, report.md, report.html and the console table."""

from __future__ import annotations

from pathlib import Path

from kubetune_api.spec import METRICS


def comparison_rows(base: dict[str, float], tuned: dict[str, float]) -> list[dict[str, str]]:
    rows = []
    for metric in METRICS:
        if metric not in tuned:
            continue
        b, t = base.get(metric), tuned[metric]
        rows.append({
            "metric": metric, "base": "-" if b is None else f"{b:g}", "tuned": f"{t:g}",
            "delta": "-" if b is None else f"{t - b:+.4g}",
        })
    return rows


def console_table(base: dict[str, float], tuned: dict[str, float]) -> str:
    rows = comparison_rows(base, tuned)
    header = {"metric": "metric", "base": "base", "tuned": "tuned", "delta": "change"}
    widths = {k: max(len(r[k]) for r in [header, *rows]) for k in header}
    lines = []
    for row in [header, *rows]:
        cells = [row["metric"].ljust(widths["metric"])]
        cells += [row[k].rjust(widths[k]) for k in ("base", "tuned", "delta")]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * widths[k] for k in header))
    return "\n".join(lines)


def loss_curve(log: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log if e.get("event") == "step"]
    losses = [e["loss"] for e in log if e.get("event") == "step"]
    evals = [(e["step"], e["evalLoss"]) for e in log if e.get("event") == "eval" and "evalLoss" in e]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(steps, losses, label="training loss")
    if evals:
        ax.scatter(*zip(*evals, strict=True), color="C1", label="eval loss", zorder=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def render(context: dict, folder: Path) -> tuple[Path, Path]:
    """report.md and report.html in `folder` (next to loss-curve.png)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("kubetune_trainer", "templates"), autoescape=select_autoescape())
    context = {**context, "table": comparison_rows(context["base"], context["tuned"])}
    html = folder / "report.html"
    html.write_text(env.get_template("report.html.j2").render(**context))
    md = folder / "report.md"
    md.write_text(_markdown(context))
    return md, html


def _markdown(c: dict) -> str:
    lines = [
        f"# {c['name']}", "",
        f"Model `{c['model']}`, {c['method']}, spec hash `{c['spec_hash']}`. {c['data']['train']} training and "
        f"{c['data']['eval']} held-out examples; {c['steps']} steps in {c['train_seconds']} s: {c['stop']}.", "",
        *([f"Gate first reached during training: {c['gate_first_reached']['message']}.", ""]
          if c.get("gate_first_reached") else []),
        "## Base vs tuned (held-out)", "", "| metric | base | tuned | change |", "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['metric']} | {r['base']} | {r['tuned']} | {r['delta']} |" for r in c["table"]]
    lines.append("")
    lines += [f"**{'PASS' if v['ok'] else 'FAIL'}**: {v['message']}" for v in c["verdicts"]]
    t = c["tokens"]
    lines += [
        "", "## Training loss", "", "![training loss](loss-curve.png)", "", "## Data", "",
        f"{c['data']['rows']} rows read, {c['data']['duplicates']} exact duplicates removed. Tokens per example: "
        f"min {t.get('min')}, median {t.get('p50')}, p95 {t.get('p95')}, max {t.get('max')}; "
        f"{t.get('truncated')} truncated to {c['max_seq']}.", "",
        *(f"**Warning:** {w}\n" for w in c["data"].get("warnings", [])), "## Sample predictions", "",
        "| prompt | reference | base | tuned |", "| --- | --- | --- | --- |",
    ]
    for p in c["samples"]:
        cells = [str(p.get(k, "")).replace("|", "\\|").replace("\n", " ") for k in ("prompt", "reference", "base", "tuned")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
