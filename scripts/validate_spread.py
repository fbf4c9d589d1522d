"""Does the stated spread hold between sessions? Run the same cells in pairs of separate sessions.

For each pair, every cell's two p50s must differ by at most the two stated spreads added
(absolute: |p50_a - p50_b| <= ci_a * p50_a + ci_b * p50_b), and so must every non-eager cell's
two paired speedups (with the speedups' own intervals). Prints one row per pair and cell
with the p50s, the stated spreads (and their within-session parts), the load each session
saw, and pass/fail; exits 1 if any row fails.

    python scripts/validate_spread.py --data-root /work/shared/data --pairs 5
    python scripts/validate_spread.py --suite suites/ --pairs 5 -- --cnn-model=lenet,alexnet

By default the sessions use a fresh cache whose built artifacts (trained weights, ONNX files,
TorchScript archives, reference and accuracy logits) are copied from ``--seed-cache`` when given, but no
remembered choices or earlier sessions: the first session starts from the prior, as on a
new machine. ``--cache-dir`` runs on a cache as it is instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = ("weights", "onnx", "torchscript", "reference", "calibrated", "logits")


def run_session(args: argparse.Namespace, cache: Path, out: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "pytest", args.suite, f"--cnn-backend={args.backends}", f"--cnn-cache-dir={cache}",
               f"--cnn-json={out}", "-q", "-p", "no:cacheprovider", *args.pytest_args]
    if args.data_root:
        command.append(f"--cnn-data-root={args.data_root}")
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"session failed: {' '.join(command)} (exit {done.returncode})")
    return json.loads(out.read_text()), time.monotonic() - started


def cells(document: dict) -> dict[str, dict]:
    return {f"{r['model']}-{r['backend']}-bs{r['batch_size']}": r for r in document["results"] if r.get("latency_ms")}


def load_text(r: dict) -> str:
    m = r.get("machine") or {}
    la, others = m.get("load_before"), m.get("others_cpu")
    return f"{la:.1f}/{others:.0%}" if la is not None and others is not None else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--suite", default="suites/test_lenet_mnist.py")
    parser.add_argument("--backends", default="eager,torchscript,ort")
    parser.add_argument("--data-root", default=os.environ.get("CNNBENCH_DATA_ROOT"))
    parser.add_argument("--seed-cache", type=Path, help="copy built artifacts (not tuning records) from this cache")
    parser.add_argument("--cache-dir", type=Path, help="run on this cache as it is (history and choices included)")
    parser.add_argument("--out", type=Path, help="folder for the sessions' JSON files (default: a temporary one)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="cnnbench-validate-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.cache_dir is not None:
        cache = args.cache_dir
    else:
        cache = out_dir / "cache"
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir()
        for kind in ARTIFACTS:
            if args.seed_cache is not None and (args.seed_cache / kind).is_dir():
                shutil.copytree(args.seed_cache / kind, cache / kind)
    print(f"cache: {cache}; results: {out_dir}")

    header = (f"{'pair':>4}  {'cell':22} {'p50 A ms':>9} {'±ci A':>6} {'p50 B ms':>9} {'±ci B':>6} {'|A-B|':>6} "
              f"{'allowed':>7}  {'within-only':>11}  {'hist':>4}  {'load A':>9} {'load B':>9}  result")
    rows, failures = [], 0
    speed_rows = []
    for pair in range(1, args.pairs + 1):
        sessions = []
        for side in "AB":
            document, seconds = run_session(args, cache, out_dir / f"pair{pair}-{side}.json")
            start = document["environment"].get("load_at_start") or {}
            print(f"pair {pair} session {side}: {seconds:.0f} s, load at start {start.get('load_before', float('nan')):.2f} "
                  f"(others {start.get('others_cpu') or 0:.0%} of {start.get('cpus')} CPUs, steal {start.get('steal') or 0:.1%})",
                  flush=True)
            sessions.append(cells(document))
        a, b = sessions
        for name in a:
            if name not in b:
                continue
            la, lb = a[name]["latency_ms"], b[name]["latency_ms"]
            diff = abs(la["p50"] - lb["p50"])
            allowed = la["ci95_rel"] * la["p50"] + lb["ci95_rel"] * lb["p50"]
            within = (la["ci95_within"] or 0) * la["p50"] + (lb["ci95_within"] or 0) * lb["p50"]
            ok = diff <= allowed
            failures += not ok
            flag = "" if la.get("stable") is not False and lb.get("stable") is not False else " (unstable)"
            rows.append(f"{pair:>4}  {name:22} {la['p50']:9.4f} {la['ci95_rel']:6.1%} {lb['p50']:9.4f} {lb['ci95_rel']:6.1%} "
                        f"{diff / la['p50']:6.1%} {allowed / la['p50']:7.1%}  {'holds' if diff <= within else 'fails':>11}  "
                        f"{lb.get('sessions') or 0:>4}  {load_text(a[name]):>9} {load_text(b[name]):>9}  "
                        f"{'pass' if ok else 'FAIL'}{flag}")
        for name in a:
            sa, sb = (a[name].get("speedup") or {}), ((b.get(name) or {}).get("speedup") or {})
            if not sa.get("paired") or not sb.get("paired") or not sa.get("value") or not sb.get("value"):
                continue
            diff = abs(sa["value"] - sb["value"])
            allowed = sa["ci95_rel"] * sa["value"] + sb["ci95_rel"] * sb["value"]
            ok = diff <= allowed
            failures += not ok
            speed_rows.append(f"{pair:>4}  {name:22} {sa['value']:9.4f} {sa['ci95_rel']:6.1%} {sb['value']:9.4f} "
                              f"{sb['ci95_rel']:6.1%} {diff / sa['value']:6.1%} {allowed / sa['value']:7.1%}  "
                              f"{'pass' if ok else 'FAIL'}")
    print()
    print(header)
    print("\n".join(rows))
    print(f"\n|A-B| and allowed (the two ±ci added) relative to p50 A; within-only: whether the within-session parts "
          f"alone would have covered the difference; hist: earlier sessions behind B's between-session term; "
          f"load: 1-minute load average before the cell / other processes' share of the CPUs.")
    if speed_rows:
        print(f"\n{'pair':>4}  {'cell':22} {'speedup A':>9} {'±ci A':>6} {'speedup B':>9} {'±ci B':>6} {'|A-B|':>6} "
              f"{'allowed':>7}  result")
        print("\n".join(speed_rows))
    total = len(rows) + len(speed_rows)
    print(f"{total - failures} of {total} comparisons pass" + (f", {failures} FAIL" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
