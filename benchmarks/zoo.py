"""graddoctor's verdicts on the zoo of real architectures (tests/zoo.py), calibration vs held-out.

Every zoo model is judged at init (one forward/backward under watch) and after `--steps` steps of
its own recipe (AdamW, its loss) under watch(optimizer=); every planted pathology likewise. For
each: the verdict at init and after training, the expected one, seconds. Summary lines, apart for
the calibration and the held-out half (families split before any tuning, tests/zoo.py):
- false alarms: healthy models with any finding worse than info, at init / after training;
- detection: planted cases where a finding of an acceptable kind was made in the phase(s) where
  the pathology is visible (for exploding, a non_finite finding counts: it is where it ends);
- cause in the top two: such a finding ranks an acceptable cause first or second;
- localised: such a finding names layers of which at least half lie in the planted blocks;
- exceptions raised, and runs that left a hook behind.
Writes docs/results/zoo.json and docs/results/zoo.md (the table + summary).

    python benchmarks/zoo.py                     # everything, seeds 0..2, 50 steps (what docs/results/ holds)
    python benchmarks/zoo.py --seeds 1           # seed 0 only: a third of the time
    python benchmarks/zoo.py --only gpt2,bert    # a few models (zoo or planted names)
    python benchmarks/zoo.py --seeds 1,2 --json /tmp/zoo12.json   # seeds 1 and 2 only, written there
    python benchmarks/zoo.py --rescore /tmp/zoo0.json,/tmp/zoo12.json   # merge runs into docs/results/
    python benchmarks/zoo.py --oracle            # the plain-autograd measurements behind each planted truth
    python benchmarks/zoo.py --lr-sweep          # loss drop per learning rate (the recipes' lr choice)
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import zoo  # noqa: E402
import zoo_faults  # noqa: E402
import zoo_oracle  # noqa: E402
import zoo_planted  # noqa: E402

from graddoctor.progress import bar  # noqa: E402

RESULTS = ROOT / "docs" / "results"


# -- scoring (pure) -----------------------------------------------------------------------------
GROUP_DEPTH = 3  # a finding's layers are counted per module-name prefix of this many parts ("bert.encoder.layer")


def layer_groups(layers) -> dict[str, int]:
    """Layer names counted per prefix of GROUP_DEPTH dotted parts (the results file stays small)."""
    if isinstance(layers, dict):  # already grouped
        return layers
    return dict(Counter(".".join(x.split(".")[:GROUP_DEPTH]) for x in layers))


def verdict(d) -> dict | None:
    """A Diagnosis reduced to what the table and the scores need."""
    if d is None:
        return None
    bad = [f for f in d.findings if f.severity != "info"]
    return {"healthy": d.healthy, "kinds": sorted(d.kinds()),
            "findings": [{"kind": f.kind, "severity": f.severity, "layers": layer_groups(f.layers),
                          "causes": [c.name for c in f.causes[:2]]} for f in bad],
            "info": sorted({f.kind for f in d.findings if f.severity == "info"})}


def show(v: dict | None) -> str:
    """The verdict as the table prints it."""
    if v is None:
        return "-"
    if v["healthy"]:
        return "healthy"
    return ", ".join(f"{f['kind']} ({f['severity'][:4]}, {f['causes'][0] if f['causes'] else '?'})"
                     for f in v["findings"])


def score_planted(p: zoo.Planted, v: dict | None) -> dict:
    """Detection, cause in the top two, localisation of one planted case in one phase."""
    if v is None:
        return {"detected": False, "cause": False, "localised": None if not p.blocks else False}
    want = set(p.kinds)
    match = [f for f in v["findings"] if f["kind"] in want or (f["kind"] == "non_finite" and "exploding" in want)]
    loc = None
    if p.blocks:
        inside = lambda groups: sum(n for g, n in groups.items() if any(g.startswith(b) for b in p.blocks))
        loc = any(f["layers"] and inside(f["layers"]) >= sum(f["layers"].values()) / 2 for f in match)
    return {"detected": bool(match), "cause": any(set(f["causes"][:2]) & set(p.causes) for f in match),
            "localised": loc}


def phases(when: str) -> tuple[str, ...]:
    """The phases in which a pathology visible `when` is scored."""
    return {"init": ("init",), "trained": ("trained",), "both": ("init", "trained")}[when]


def summarise(rows: list[dict]) -> dict:
    """Per half: false alarms, detection, cause top-2, localisation, exceptions, hooks left behind."""
    out = {}
    for half in zoo.HALVES:
        rs = [r for r in rows if r["half"] == half]
        healthy = [r for r in rs if r["kind"] == "zoo" and r["expected"] == "healthy"]
        harmless = [r for r in rs if r["kind"] == "harmless"]
        planted = [s for r in rs if r["kind"] == "planted" for s in r["scores"].values()]
        frac = lambda xs: [sum(xs), len(xs)]
        alarm = lambda r, ph: not (r[ph] or {"healthy": False})["healthy"]
        out[half] = {
            "false_alarms_init": frac([alarm(r, "init") for r in healthy]),
            "false_alarms_trained": frac([alarm(r, "trained") for r in healthy]),
            "harmless_alarms_init": frac([alarm(r, "init") for r in harmless]),
            "harmless_alarms_trained": frac([alarm(r, "trained") for r in harmless]),
            "detection": frac([s["detected"] for s in planted]),
            "cause_top2": frac([s["cause"] for s in planted]),
            "localised": frac([s["localised"] for s in planted if s["localised"] is not None]),
            "exceptions": frac([r["error"] is not None for r in rs]),
            "hooks_left": frac([not r["hooks_clean"] for r in rs]),
        }
    return out


# -- running ------------------------------------------------------------------------------------
def claims(kind: str, m: zoo.ZooModel, p: zoo.Planted | None) -> dict:
    """What a row is judged against: its kind, expected verdict, fault and phase(s)."""
    expected = {"zoo": m.expected, "harmless": "healthy", "unscored": "(not scored)"}.get(kind)
    return {"kind": kind, "expected": expected or "+".join(sorted(p.kinds)), "fault": p.fault if p else None,
            "when": p.when if kind == "planted" else None}


def scored(row: dict, p: zoo.Planted | None) -> dict:
    """The row with its planted scores (detection, cause, localisation per phase), if it is planted."""
    row = {k: v for k, v in row.items() if k != "scores"}
    for ph in ("init", "trained"):  # rows of older runs list every layer
        for f in (row[ph] or {}).get("findings", []):
            f["layers"] = layer_groups(f["layers"])
    if row["kind"] == "planted":
        row["scores"] = {ph: score_planted(p, row[ph]) for ph in phases(p.when)}
    return row


def run_one(kind: str, m: zoo.ZooModel, seed: int, steps: int, every: int, planted: zoo.Planted | None) -> dict:
    """Judge one recipe and score it."""
    v = zoo.judge(m, seed=seed, steps=steps, every=every)
    row = {"name": m.name, "family": m.family, "half": m.half, "seed": seed, **claims(kind, m, planted),
           "init": verdict(v.init), "trained": verdict(v.trained), "seconds": round(v.seconds, 2),
           "loss_first": v.losses[0] if v.losses else None,
           "loss_last": statistics.fmean(v.losses[-5:]) if v.losses else None,
           "error": v.error, "hooks_clean": v.hooks_clean}
    return scored(row, planted)


def fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


TITLES = {"zoo": "The zoo (unmodified; a model expected unhealthy is scored as a planted case)",
          "planted": "Planted pathologies (scored)",
          "harmless": "Harmless plantings (expected healthy)", "unscored": "Unscored plantings (harm without a "
          "gradient signature, or mild; shown, not counted)"}


def table(rows: list[dict]) -> str:
    """The per-model markdown tables, one per row kind."""
    out = []
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        out += [f"\n**{TITLES[kind]}**\n", "| model | half | fault | expected | at init | after training | loss | s |",
                "|---|---|---|---|---|---|---|---|"]
        for r in rs:
            exp = r["expected"] + (f" ({r['when']})" if r["when"] else "")
            err = f" **error:** {r['error']}" if r["error"] else ""
            hooks = "" if r["hooks_clean"] else " **hooks left**"
            seed = f" (seed {r['seed']})" if r["seed"] else ""
            out.append(f"| {r['name']}{seed} | {r['half']} | {r['fault'] or '-'} | {exp} | {show(r['init'])} | "
                       f"{show(r['trained'])}{err}{hooks} | {fmt(r['loss_first'])} → {fmt(r['loss_last'])} | "
                       f"{r['seconds']:.1f} |")
    return "\n".join(out)


def summary_lines(s: dict) -> list[str]:
    """One line per half and measure."""
    pct = lambda a: f"{a[0]}/{a[1]}" + (f" ({100 * a[0] / a[1]:.0f}%)" if a[1] else "")
    out = []
    for half, v in s.items():
        out.append(f"{half}: false alarms on the healthy zoo at init {pct(v['false_alarms_init'])}, after "
                   f"training {pct(v['false_alarms_trained'])}; on harmless plantings at init "
                   f"{pct(v['harmless_alarms_init'])}, after training {pct(v['harmless_alarms_trained'])}; planted "
                   f"(per case and phase) detection {pct(v['detection'])}, cause in top two {pct(v['cause_top2'])}, "
                   f"localised {pct(v['localised'])}; exceptions {pct(v['exceptions'])}, hooks left "
                   f"{pct(v['hooks_left'])}")
    return out


def wrong(rows: list[dict]) -> list[str]:
    """The models (and planted cases) with a wrong verdict, per phase: a false alarm, a miss, a wrong cause."""
    out = []
    for r in rows:
        if r["expected"] == "healthy":
            ph = [p for p in ("init", "trained") if not (r[p] or {"healthy": False})["healthy"]]
        elif r["kind"] == "planted":
            ph = [p if not s["detected"] else f"{p} (cause not in top two)" for p, s in r["scores"].items()
                  if not s["detected"] or not s["cause"]]
        else:
            continue
        if ph or r["error"]:
            seed = f", seed {r['seed']}" if r["seed"] else ""
            out.append(f"{r['name']} ({r['half']}{seed}): {', '.join(ph) or 'error'}")
    return out


def flips(rows: list[dict]) -> list[str]:
    """The recipes whose verdict (healthy, or the kinds found) differs between seeds, per phase."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = sorted((r for r in rows if r["name"] == name), key=lambda r: r["seed"])
        for ph in ("init", "trained"):
            seen: dict[str, list[int]] = {}
            for r in rs:
                v = r[ph]
                word = "-" if v is None else "healthy" if v["healthy"] else "+".join(
                    sorted({f["kind"] for f in v["findings"]}))
                seen.setdefault(word, []).append(r["seed"])
            if len(seen) > 1:
                out.append(f"{name} ({ph}): " + "; ".join(f"{w} (seed {', '.join(map(str, ss))})"
                                                          for w, ss in seen.items()))
    return out


KINDS = ("zoo", "planted", "harmless", "unscored")  # row kinds, in table order


def select(only: str | None) -> list[tuple[str, zoo.ZooModel, zoo.Planted | None]]:
    """The recipes to judge: the healthy zoo, planted, harmless and unscored plantings (or the named subset)."""
    items = [("zoo", m, None) for m in zoo.ZOO]
    items += [(p.extra["category"], p.model, p) for p in zoo_planted.ALL]
    items.sort(key=lambda it: KINDS.index(it[0]))
    if only:
        names = set(only.split(","))
        unknown = names - {m.name for _, m, _ in items}
        if unknown:
            sys.exit(f"zoo: error: unknown name(s) {', '.join(sorted(unknown))}; choose from: "
                     f"{', '.join(m.name for _, m, _ in items)}")
        items = [it for it in items if it[1].name in names]
    return items


def rescore(rows: list[dict]) -> list[dict]:
    """Rows of an earlier run re-scored against the current claims (the verdicts do not depend on them)."""
    items = {m.name: (kind, m, p) for kind, m, p in select(None)}
    order = {name: i for i, name in enumerate(items)}
    out = [scored({**r, **claims(*items[r["name"]])}, items[r["name"]][2]) for r in rows if r["name"] in items]
    return sorted(out, key=lambda r: (r["seed"], order[r["name"]]))


def seed_list(text: str) -> list[int]:
    """`--seeds`: a count N (seeds 0..N-1) or a comma-separated list of seeds ("1,2")."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give a count (3) or distinct seeds (0,1,2)")
    return seeds if "," in text else list(range(seeds[0]))


def seed_range(seeds: list[int]) -> str:
    """The seeds as the header names them: "0..2" for a run of consecutive seeds, else a list."""
    if len(seeds) == 1:
        return str(seeds[0])
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))


def merged(paths: str, later_wins: bool = False) -> tuple[list[dict], dict]:
    """The rows of earlier runs (comma-separated JSON files, e.g. one per seed) and the first one's config.

    With `later_wins`, a row of a later file replaces an earlier file's row of the same model and seed
    (runs that judged a subset again, in the order they ran); else such a pair is an error.
    """
    rows, configs = [], []
    for path in paths.split(","):
        data = json.loads(Path(path).read_text())
        keys = {(r["name"], r["seed"]) for r in data["rows"]} if later_wins else set()
        rows = [r for r in rows if (r["name"], r["seed"]) not in keys] + data["rows"]
        configs.append(data["config"])
    for k in ("steps", "every"):
        if len({c[k] for c in configs}) > 1:
            sys.exit(f"zoo: error: the runs in {paths} differ in --{k}; merge runs of one configuration")
    dup = [k for k, n in Counter((r["name"], r["seed"]) for r in rows).items() if n > 1]
    if dup:
        sys.exit(f"zoo: error: {paths} judge {dup[0][0]} twice on seed {dup[0][1]}; merge runs of distinct seeds")
    return rows, configs[0]


def rejudged_note(paths: str) -> str:
    """The header's note on rows that a later run judged again."""
    rows, _ = merged(paths, later_wins=True)
    names = sorted({r["name"] for r in rows})
    return (f"{len(rows)} rows ({', '.join(names)}; seeds {seed_range(sorted({r['seed'] for r in rows}))}) "
            "were judged again by later runs, on code whose changes could affect only these rows (--rejudged)")


def bench(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    items = select(args.only)
    if args.rescore:  # the verdicts of earlier full runs, scored against the claims as they are now
        old, config = merged(args.rescore)
        if args.rejudged:  # rows judged again by a later run replace the earlier ones (same model and seed)
            new, new_config = merged(args.rejudged, later_wins=True)
            if (new_config["steps"], new_config["every"]) != (config["steps"], config["every"]):
                sys.exit(f"zoo: error: {args.rejudged} differs from {args.rescore} in --steps or --every")
            keys = {(r["name"], r["seed"]) for r in new}
            old = [r for r in old if (r["name"], r["seed"]) not in keys] + new
        rows = rescore(old)
        args.seeds = sorted({r["seed"] for r in rows})
        args.steps, args.every = config["steps"], config["every"]
        for seed in args.seeds:
            missing = {m.name for _, m, _ in items} - {r["name"] for r in rows if r["seed"] == seed}
            if missing:
                sys.exit(f"zoo: error: {args.rescore} has no verdicts for {', '.join(sorted(missing))} on seed "
                         f"{seed}; run them")
    else:
        rows = []
        with bar(len(items) * len(args.seeds), "judging the zoo") as b:
            for seed in args.seeds:
                for kind, m, p in items:
                    rows.append(run_one(kind, m, seed, args.steps, args.every, p))
                    if args.partial:  # a long run that is stopped keeps what it judged
                        with open(args.partial, "a") as fh:
                            fh.write(json.dumps(rows[-1]) + "\n")
                    b.update(1, model=m.name)
    s = summarise(rows)
    n = {k: sum(it[0] == k for it in items) for k in KINDS}
    head = (f"{len(items)} recipes ({n['zoo']} zoo models, {n['planted']} planted pathologies, {n['harmless']} "
            f"harmless and {n['unscored']} unscored plantings), seeds {seed_range(args.seeds)}, {args.steps} steps, "
            f"every={args.every}; torch {torch.__version__}, transformers {transformers.__version__}, one CPU thread"
            + (f"; verdicts of {len(args.rescore.split(','))} earlier run(s) re-scored against the current claims "
               "(--rescore)" if args.rescore else "")
            + (f"; {rejudged_note(args.rejudged)}" if args.rescore and args.rejudged else ""))
    lines = summary_lines(s)
    wr = wrong(rows)
    per_seed, flipped = [], []
    if len(args.seeds) > 1:  # the spread behind the pooled counts, and the verdicts that change with the seed
        per_seed = [f"seed {seed}, {x}" for seed in args.seeds
                    for x in summary_lines(summarise([r for r in rows if r["seed"] == seed]))]
        flipped = flips(rows)
        per_seed = ["", "**Per seed**\n", *[f"- {x}" for x in per_seed], "",
                    "**Verdicts that differ between seeds** (phase)\n", *([f"- {x}" for x in flipped] or ["- none"])]
    md = "\n".join([f"{head}\n", f"**Summary** ({'pooled over the seeds' if len(args.seeds) > 1 else 'one seed'})\n",
                    *[f"- {x}" for x in lines], *per_seed, "",
                    "**Wrong verdicts** (phase; a model appears once per seed it is wrong on)\n",
                    *([f"- {x}" for x in wr] or ["- none"]), "", table(rows), ""])
    print(table(rows), "", *lines, *per_seed, "", "wrong verdicts:", *(wr or ["none"]), sep="\n")
    if not args.only and not args.json:  # the results files hold full runs only
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "zoo.md").write_text(md)
    if args.json or not args.only:
        path = Path(args.json) if args.json else RESULTS / "zoo.json"
        seeds_json = {str(seed): summarise([r for r in rows if r["seed"] == seed]) for seed in args.seeds}
        head_json = json.dumps({"config": vars(args), "header": head, "summary": s, "summary_per_seed": seeds_json,
                                "wrong": wr, "flips": flipped}, indent=1)
        body = ",\n".join(json.dumps(r) for r in rows)  # one row per line: small, and diffs by model
        path.write_text(f'{head_json[:-2]},\n "rows": [\n{body}\n]}}\n')
        print(f"\nwrote {path}" + ("" if args.only or args.json else f" and {RESULTS / 'zoo.md'}"))


def oracle(args: argparse.Namespace) -> None:
    """Re-measure each planting by plain autograd: does its claim hold, and which category is it?"""
    torch.set_num_threads(1)
    cases = [p for p in zoo_planted.ALL if not args.only or p.name in args.only.split(",")]
    if args.category:
        cases = [p for p in cases if p.extra["category"] == args.category]
    seeds = tuple(args.seeds or range(3))
    found = {}
    with bar(len(cases), "measuring plantings") as b:
        for p in cases:
            m = zoo_oracle.measure(p, zoo.get(p.base), seeds=seeds, steps=args.steps)
            why = m.holds(p)[1]
            cat = m.category(p)
            text = f"{m.summary()}. {why}"
            if "precision_underflow" in p.causes and p.extra["truth"] == "cost":
                u = zoo_oracle.optimizer_underflow(p.model)
                text += (f". After one {u['dtype']} step: {100 * u['second_moment_zero']:.0f}% of the AdamW second-"
                         f"moment entries with a non-zero gradient are 0 (g*g underflows), eps rounds to 0: "
                         f"{u['eps_is_zero']}, {u['nonfinite_params']}/{u['params']} parameter tensors non-finite")
            found[p.name] = {"category": cat, "claimed": p.extra["category"], "text": text, "seeds": len(seeds),
                             "steps": args.steps}
            flag = "" if cat == p.extra["category"] else f"  (claimed {p.extra['category']})"
            print(f"{p.name}: {cat}{flag}\n    {text}", flush=True)
            b.update(1, case=p.name)
            if args.write:  # after every case: a long run that stops keeps what it measured
                path = zoo_planted.EVIDENCE_FILE
                old = json.loads(path.read_text()) if path.exists() else {}
                path.write_text(json.dumps(old | found, indent=1, sort_keys=True) + "\n")


def lr_sweep(args: argparse.Namespace) -> None:
    """Loss drop over `steps` at a few learning rates, per healthy zoo model (seed 0)."""
    torch.set_num_threads(1)
    lrs = (1e-4, 3e-4, 1e-3, 3e-3)
    for _, m, _ in select(args.only):
        base_lr = m.make_optimizer([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"]
        cells = []
        for lr in lrs:
            r = zoo_faults.lr_times(m, m.name, lr / base_lr)
            cells.append(f"{lr:g}: {zoo_oracle.drop(zoo_oracle.losses(r, 0, args.steps)):.2f}")
        print(f"{m.name:18s} (recipe lr {base_lr:g})  " + "  ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated zoo / planted names")
    ap.add_argument("--seeds", type=seed_list, help="a count N: seeds 0..N-1 (default 3); or a "
                    "comma-separated list of seeds (1,2)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--every", type=int, default=1, help="watch(every=) during training")
    ap.add_argument("--rescore", metavar="JSON", help="re-score the verdicts of earlier full runs' JSON files (comma-"
                    "separated, e.g. one per seed) against the current claims, and rewrite the results (no judging)")
    ap.add_argument("--rejudged", metavar="JSON", help="with --rescore: rows of these runs (comma-separated JSON, "
                    "in the order they ran: a later one wins) replace those of the same model and seed (a subset "
                    "judged again after a change that only affects it)")
    ap.add_argument("--json", help="write the results JSON here instead of docs/results/ (default with a full run: "
                    "docs/results/zoo.json and zoo.md)")
    ap.add_argument("--partial", metavar="JSONL", help="append each judged row to this file as it is done")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--oracle", action="store_true", help="print the autograd measurements behind each truth")
    ap.add_argument("--category", choices=("planted", "harmless", "unscored"), help="--oracle: only these plantings")
    ap.add_argument("--write", action="store_true", help="--oracle: record the measurements in tests/zoo_evidence.json")
    mode.add_argument("--lr-sweep", action="store_true", help="loss drop per learning rate, per healthy model")
    args = ap.parse_args()
    if not args.oracle:
        args.seeds = args.seeds or [0, 1, 2]  # the published results' seeds (docs/results/zoo.md)
    (oracle if args.oracle else lr_sweep if args.lr_sweep else bench)(args)


if __name__ == "__main__":
    main()
