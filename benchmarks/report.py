"""Markdown tables of a `unictr bench --out` file, for docs/performance.md.

    python -m benchmarks.report benchmarks/results/cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _by_size(requests: dict[str, Any]) -> list[tuple[str, Any]]:
    """Requests ordered by (users, candidates), not by their JSON key."""
    return sorted(requests.items(), key=lambda kv: (kv[1]["users"], kv[1]["candidates"]))


def _ms(t: dict[str, float]) -> str:
    """Median with its min–max range."""
    return f"{t['median_ms']:.2f} ({t['min_ms']:.2f}–{t['max_ms']:.2f})"


def machine(r: dict[str, Any]) -> str:
    m = r["machine"]
    return _table(["machine", ""], [
        ["CPU", f"{m['cpu']} ({m['cpu_capability']}; bf16: {m['bf16']})"],
        ["cores", f"{m['logical_cores']} logical, {m['usable_cores']} usable"],
        ["threads", str(m["threads"])],
        ["load average at start (1/5/15 min)", " / ".join(map(str, m["load_average_at_start"]))],
        ["device", m["device"] + (f" ({m['gpu']})" if "gpu" in m else "")],
        ["versions", f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, Python {m['python']}"],
    ])


def floor(r: dict[str, Any]) -> str:
    f = r["floor"]
    rates = ", ".join(
        f"{k} {v['gflops_peak']:.0f} GFLOP/s peak ({v['gflops_median']:.0f} median, {v['size']}² GEMM)"
        for k, v in f["matmul"].items() if "gflops_peak" in v
    )
    rows = [
        [name, f"{q['mflop']:.1f}", f"{q['per_row_mflop']:.1f}"]
        + [f"{q['floor_ms'][d]:.3f}" for d in ("fp32", "bf16") if d in q["floor_ms"]]
        for name, q in _by_size(f["requests"])
    ]
    dtypes = [d for d in ("fp32", "bf16") if d in next(iter(f["requests"].values()))["floor_ms"]]
    header = ["request (users x candidates)", "MFLOP (broadcast)", "MFLOP (per row)"]
    header += [f"floor ms {d}" for d in dtypes]
    return f"Matmul rate: {rates}.\n\n" + _table(header, rows)


def embedding(r: dict[str, Any]) -> str:
    e = r["embedding"]
    rows = []
    for k in (1, 10):
        x = e[f"ids_per_bag_{k}"]
        f, s = x["forward"], x["train_step"]
        rows.append([
            str(k),
            f"{_ms(f['fused'])} / {_ms(f['per_feature'])}", f"{x['forward_speedup']:.1f}x",
            f"{_ms(s['adagrad_fused_in_backward'])} / {_ms(s['adagrad_sparse_per_feature'])}",
            f"{x['train_step_speedup_adagrad']:.1f}x",
            f"{_ms(s['sgd_sparse_fused'])} / {_ms(s['sgd_sparse_per_feature'])}",
            f"{x['train_step_speedup_sgd_sparse']:.1f}x",
            f"{_ms(s['adamw_dense_fused'])} / {_ms(s['adamw_dense_per_feature'])}",
            f"{x['train_step_speedup_adamw_dense']:.1f}x",
        ] + ([_ms(s["adagrad_fbgemm"]), f"{x['train_step_vs_fbgemm']:.1f}x"] if "adagrad_fbgemm" in s else []))
    header = ["ids/bag", "forward ms fused / loop", "x", "step ms, Adagrad, fused in backward / loop", "x",
              "step ms, sparse SGD, fused / loop", "x",
              "step ms, dense AdamW, fused / loop", "x"]
    if "skipped" not in e["fbgemm"]:
        header += ["step ms, FBGEMM TBE (row-wise Adagrad)", "ours vs FBGEMM"]
    fb = e["fbgemm"].get("skipped", "measured")
    return (f"{e['features']} features, batch {e['batch']}, {e['table_rows']:,} rows in all (largest "
            f"{e['largest_table']:,}), dim {e['dim']}. FBGEMM: {fb}.\n\n" + _table(header, rows))


def broadcast(r: dict[str, Any]) -> str:
    b = r["broadcast"]
    shape = b["long_sequence_shape"]
    models = (("sim.yaml (L=32, 1 block)", b["sim_default"]),
              (f"long sequence (L={shape['max_len']}, {shape['layers']} blocks)", b["long_sequence"]))
    rows = [
        [model, name, _ms(q["broadcast"]), _ms(q["per_row"]), f"{q['speedup']:.1f}x", f"{q['floor_ms']:.2f}",
         f"{q['broadcast_x_floor']:.1f}x", f"{q['per_row_x_floor']:.1f}x", f"{q['max_abs_diff']:.0e}"]
        for model, m in models
        for name, q in _by_size(m["requests"])
    ]
    header = ["model", "request", "broadcast ms", "per-row ms", "speedup", "floor ms", "broadcast / floor",
              "per-row / floor", "max abs diff"]
    return _table(header, rows)


def _headline(s: dict[str, Any]) -> str:
    """The headline (the advised configuration, numpy request) and the fastest variant (JSON request)."""
    f = s["fastest"]
    return (f"Headline, the advised configuration: **{s['backend']}**, numpy request, p50 {s['p50_ms']:.2f} / "
            f"p99 {s['p99_ms']:.2f} ms = **{s['p99_x_floor']:.2f}x** its {s['floor_ms']:.2f} ms floor. Fastest "
            f"(JSON request): **{f['backend']}**, p50 {f['p50_ms']:.2f} / p99 {f['p99_ms']:.2f} ms = "
            f"{f['p99_x_floor']:.2f}x its {f['floor_ms']:.2f} ms floor.")


def serving(r: dict[str, Any]) -> str:
    s = r["serving"]
    rows = []
    arrays = s.get("in_process_numpy", {})  # runs before the numpy request form have none
    for name, t in s["in_process"].items():
        m = s["model_only"][name]
        a = [f"{arrays[name]['p50_ms']:.2f}", f"{arrays[name]['p99_ms']:.2f}",
             f"{s['in_process_numpy_x_floor'][name]:.1f}x"] if name in arrays else ["", "", ""]
        rows.append([
            name, f"{t['p50_ms']:.2f}", f"{t['p99_ms']:.2f}", f"{s['in_process_x_floor'][name]:.1f}x", *a,
            f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}", f"{s['model_only_x_floor'][name]:.1f}x",
            f"{s['setup_s'][name]:.1f}", f"{s['max_abs_diff_vs_eager_fp32'][name]:.0e}",
        ])
    header = ["backend", "JSON: Scorer.score p50", "p99", "p99 / floor", "numpy columns: p50", "p99", "p99 / floor",
              "model p50", "model p99", "model p99 / floor", "load s", "max abs diff"]
    stages = ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in s["stages"].items())
    layouts = ", ".join(
        f"{k} p50 {v['p50_ms']:.2f} / p99 {v['p99_ms']:.2f} ms" for k, v in s.get("request_layouts", {}).items()
    )
    http = s["http"]
    http_rows = [
        [name, f"{t['p50_ms']:.2f}", f"{t['p99_ms']:.2f}", f"{s['http_x_floor'][name]:.1f}x"]
        for name, t in http.items() if "p50_ms" in t
    ]
    return (
        f"Request: {s['request']}, {s['mflop']:.0f} MFLOP; floor {s['floors_ms']['fp32']:.2f} ms fp32"
        + (f", {s['floors_ms']['bf16']:.3f} ms bf16" if "bf16" in s["floors_ms"] else "")
        + ". " + _headline(s)
        + f" Request stages (any backend): {stages}."
        + (f" The same request in each layout ({s['fastest']['backend']}): {layouts}." if layouts else "")
        + "\n\n"
        + _table(header, rows)
        + "\n\nOver HTTP (`unictr serve` on 127.0.0.1, client-side, sequential):\n\n"
        + (_table(["backend", "p50 ms", "p99 ms", "p99 / floor"], http_rows) if http_rows else str(http))
    )


def training(r: dict[str, Any]) -> str:
    t = r["training"]
    rows = []
    for data in ("sim", "kuairand"):
        x = t[data]
        if "variants" not in x:
            rows.append([data, f"skipped: {x['skipped']}", "", "", "", ""])
            continue
        for name, v in x["variants"].items():
            rows.append([
                f"{data} (batch {x['batch_size']}, L={x['sequence_length']}, "
                f"{x['sequence_padding']:.0%} padding, {x['rows_per_request']:.1f} rows/request)",
                name, str(v["threads"]), f"{v['rows_per_s']:,.0f}", _ms(v["step"]),
                f"{v['rows_per_s_ceiling']:,.0f} ({v['rows_per_s_ceiling'] / v['rows_per_s']:.0f}x)",
            ])
    header = ["data", "variant", "threads", "rows/s", "step ms", "matmul ceiling rows/s (x measured)"]
    return _table(header, rows)


def _pp(t: dict[str, float]) -> str:
    """p50 / p99."""
    return f"{t['p50_ms']:.2f} / {t['p99_ms']:.2f}"


def dcn(r: dict[str, Any]) -> str:
    """The dcn suite: AUC per surface by projection width, the surface exports' latency by width (whole
    request, model alone), and the config's width against separate models per surface."""
    d = r["dcn"]
    surfaces = d.get("surfaces") or list(d["serving"])
    widths = sorted((a for a in d["arms"] if a != "separate"),
                    key=lambda a: (d["arms"][a]["out_dim"] is None, d["arms"][a]["out_dim"] or 0))
    task = next(iter(d["arms"]["separate"]["aucs"][surfaces[0]]))
    name = {a: a.removeprefix("width_") for a in widths}
    auc = _table(["out_dim", "parameters", "train s", *(f"{s} {task} AUC" for s in surfaces)], [
        [name[a], f"{d['arms'][a]['params']:,}", f"{d['arms'][a]['train_seconds']:.0f}",
         *(f"{d['arms'][a]['aucs'][s][task]:.4f}" for s in surfaces)] for a in widths
    ])
    first = d["serving"][surfaces[0]]
    latency = {
        timing: _table(["out_dim", "export parameters", "MFLOP / request", *(f"{s} p50 / p99 ms" for s in surfaces)], [
            [name[a], f"{first[a]['params']:,}", f"{first[a]['mflop']:.1f}",
             *(_pp(d["serving"][s][a][timing]) for s in surfaces)] for a in widths
        ])
        for timing in ("score", "model_only")
    }
    unified = f"width_{'none' if d['unified_out_dim'] is None else d['unified_out_dim']}"
    unified = unified if unified in d["arms"] else widths[0]  # --quick sweeps other widths
    rows = []
    for s in surfaces:
        for arm, model in ((unified, "unified"), ("separate", "separate")):
            x = d["serving"][s][arm]
            rows.append([s, model, f"{x['params']:,}", f"{x['mflop']:.1f}", _pp(x["score"]), _pp(x["model_only"]),
                         f"{d['arms'][arm]['aucs'][s][task]:.4f}"])
    cost = _table(["surface", "model", "export parameters", "MFLOP / request", "score p50 / p99 ms",
                   "model only p50 / p99 ms", f"{task} AUC"], rows)
    return (f"{d['data']}; {d['request']}\n\n{auc}\n\nWhole request (`Scorer.score`):\n\n{latency['score']}"
            f"\n\nModel only (`Scorer.predict`):\n\n{latency['model_only']}\n\n{cost}")


def markdown(r: dict[str, Any]) -> str:
    parts = [machine(r)]
    for name, render in (("floor", floor), ("embedding", embedding), ("broadcast", broadcast),
                         ("serving", serving), ("training", training), ("dcn", dcn)):
        if name in r:
            load = " / ".join(map(str, r[name]["load_average_at_start"]))
            parts.append(f"### {name} (load at start {load}; {r[name]['seconds']:.0f} s)\n\n" + render(r))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(json.loads(Path(sys.argv[1]).read_text())))
