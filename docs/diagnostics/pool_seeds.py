"""Pool ``vtsched eval`` results of several held-out seeds and compare rows at equal cost, paired.

Run: ``python docs/diagnostics/pool_seeds.py OUT_SEED4 OUT_SEED5 [--against parvts]``, each argument
a folder (or file) with the ``results.json`` of one ``vtsched eval`` run (several runs on one seed
pool as one: items are told apart by the run's data set). It
prints one markdown row per case over the pooled items: accuracy with its Wilson 95% interval,
subject and non-subject accuracy, the hard subset (items that ``prune@T [downsample]`` at the row's
own target answers wrongly), visual tokens per layer, input tokens and GFLOPs (scoring included);
with ``--against NAME``, the best row whose case starts with NAME at each target is paired with
every other row of that target (McNemar's exact test on the same items): won, tied or lost at
p < 0.05. docs/demo-model.md ("Two regimes at equal cost") is made with it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` out of ``n``."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**n)


def target(case: str) -> str | None:
    return case.split("@")[1].split()[0] if "@" in case else None


def pool(paths: list[Path]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """case -> {(data set, item id): prediction} over every results.json given.

    Items are told apart by the run's ``data`` (``synthetic:4:100``), so two runs on the same data (the
    main cases and a second eval of other policies) count ``full`` and the references once, and two
    seeds, whose items share ids, stay apart."""
    cases: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        results = json.loads(file.read_text())
        for p in results["predictions"]:
            cases.setdefault(p["case"], {})[(str(results.get("data", path)), p["id"])] = p
    return cases


def summary(cases: dict[str, dict[tuple[str, str], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for case, items in cases.items():
        preds = list(items.values())
        n, right = len(preds), sum(p["correct"] for p in preds)
        subject = [p["correct"] for p in preds if p["tag"] == "subject"]
        other = [p["correct"] for p in preds if p["tag"] != "subject"]
        reference = cases.get(f"prune@{target(case)} [downsample]") if target(case) else None
        hard = [items[i]["correct"] for i, r in (reference or {}).items() if not r["correct"] and i in items]
        out[case] = {
            "n": n, "accuracy": right / n, "interval": wilson(right, n),
            "subject": sum(subject) / len(subject) if subject else float("nan"),
            "non_subject": sum(other) / len(other) if other else float("nan"),
            "hard": sum(hard) / len(hard) if hard else None, "hard_n": len(hard),
            "per_layer": sum(p["visual_tokens_per_layer"] for p in preds) / n,
            "input": sum(p["visual_tokens_input"] for p in preds) / n,
            "gflops": sum(p["prefill_gflops"] + p["partitioner_gflops"] for p in preds) / n,
            "items": items,
        }
    return out


def paired(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int, float]:
    """Items only ``a`` answers right, only ``b`` does, and McNemar's p over their common items."""
    common = a["items"].keys() & b["items"].keys()
    only_a = sum(1 for i in common if a["items"][i]["correct"] and not b["items"][i]["correct"])
    only_b = sum(1 for i in common if b["items"][i]["correct"] and not a["items"][i]["correct"])
    return only_a, only_b, mcnemar_exact(only_a, only_b)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--against", default=None, help="pair the best row of this policy with every other")
    args = parser.parse_args(argv)
    rows = summary(pool(args.results))
    print("| case | n | accuracy (95% CI) | subject | non-subject | hard (n) | vis/layer | input | GFLOPs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in sorted(rows, key=lambda c: (target(c) or "", c)):
        r = rows[case]
        low, high = r["interval"]
        hard = "-" if r["hard"] is None else f"{100 * r['hard']:.1f} ({r['hard_n']})"
        print(f"| {case} | {r['n']} | {100 * r['accuracy']:.1f} ({100 * low:.1f}-{100 * high:.1f}) | "
              f"{100 * r['subject']:.1f} | {100 * r['non_subject']:.1f} | {hard} | {r['per_layer']:.1f} | "
              f"{r['input']:.1f} | {r['gflops']:.4f} |")
    if not args.against:
        return
    for t in sorted({target(c) for c in rows if target(c)}):
        mine = [c for c in rows if c.startswith(args.against) and target(c) == t]
        if not mine:
            continue
        best = max(mine, key=lambda c: rows[c]["accuracy"])
        print(f"\n{best}: {100 * rows[best]['accuracy']:.1f}")
        for other in [c for c in rows if (target(c) == t or target(c) is None) and not c.startswith(args.against)]:
            only_best, only_other, p = paired(rows[best], rows[other])
            gap = 100 * (rows[best]["accuracy"] - rows[other]["accuracy"])
            verdict = "tie" if p >= 0.05 else "win" if gap > 0 else "loss"
            print(f"  {verdict:4} {gap:+5.1f} against {other} (p={p:.2g}; {only_best} vs {only_other} discordant)")


if __name__ == "__main__":
    main()
