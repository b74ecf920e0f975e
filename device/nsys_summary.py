#!/usr/bin/env python3
"""Where a prefill's GPU time goes, from an nsys report exported to SQLite
(nsys export --type sqlite -o X.sqlite X.nsys-rep):

    python3 device/nsys_summary.py X.sqlite [n_prefill_ubatches]

Prints the kernels by total time, the GPU's busy time against the span of its activity, the idle
gaps between consecutive GPU activities (longer than 20 us) with the kernels around them and the
host's CUDA runtime calls that overlap them, and the runtime calls by total time."""
import sqlite3
import sys
from collections import defaultdict


def main() -> None:
    db = sqlite3.connect(sys.argv[1])
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    names = dict(db.execute("SELECT id, value FROM StringIds"))
    acts = []  # (start, end, what)
    kern = defaultdict(lambda: [0, 0])
    for start, end, sid in db.execute("SELECT start, end, shortName FROM CUPTI_ACTIVITY_KIND_KERNEL"):
        n = names.get(sid, "?")
        acts.append((start, end, n))
        kern[n][0] += end - start
        kern[n][1] += 1
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables:
        for start, end, kind, size in db.execute("SELECT start, end, copyKind, bytes FROM CUPTI_ACTIVITY_KIND_MEMCPY"):
            acts.append((start, end, f"memcpy kind {kind} {size} B"))
            kern[f"memcpy kind {kind}"][0] += end - start
            kern[f"memcpy kind {kind}"][1] += 1
    if "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
        for start, end in db.execute("SELECT start, end FROM CUPTI_ACTIVITY_KIND_MEMSET"):
            acts.append((start, end, "memset"))
            kern["memset"][0] += end - start
            kern["memset"][1] += 1
    acts.sort()
    if not acts:
        print("no GPU activity")
        return
    print(f"## GPU activities by total time (us per unit of {per}): total, count, mean")
    tot = sum(v[0] for v in kern.values())
    for n, (t, c) in sorted(kern.items(), key=lambda kv: -kv[1][0])[:30]:
        print(f"  {t / 1e3 / per:10.1f} us {c / per:8.1f}  {t / c / 1e3:8.2f} us  {100 * t / tot:5.1f}%  {n[:90]}")
    busy, cur_s, cur_e = 0, acts[0][0], acts[0][1]
    gaps = []
    prev = acts[0]
    for a in acts[1:]:
        if a[0] > cur_e:
            busy += cur_e - cur_s
            gaps.append((a[0] - cur_e, cur_e, a[0], prev[2], a[2]))
            cur_s, cur_e = a[0], a[1]
        else:
            cur_e = max(cur_e, a[1])
        prev = a if a[1] >= prev[1] else prev
    busy += cur_e - cur_s
    span = acts[-1][1] - acts[0][0]
    print(f"## span {span / 1e3 / per:.1f} us, GPU busy {busy / 1e3 / per:.1f} us ({100 * busy / span:.1f}%), "
          f"per unit of {per}")
    big = [g for g in gaps if g[0] > 20_000]
    print(f"## gaps > 20 us: {len(big) / per:.1f} per unit, {sum(g[0] for g in big) / 1e3 / per:.1f} us per unit; "
          f"all gaps {sum(g[0] for g in gaps) / 1e3 / per:.1f} us per unit")
    api = []
    if "CUPTI_ACTIVITY_KIND_RUNTIME" in tables:
        api = list(db.execute("SELECT start, end, nameId FROM CUPTI_ACTIVITY_KIND_RUNTIME ORDER BY start"))
    import bisect
    api_starts = [a[0] for a in api]
    for g in sorted(big, reverse=True)[:25]:
        d, s, e, before, after = g
        i = bisect.bisect_left(api_starts, s - 2_000_000)
        over = defaultdict(int)
        while i < len(api) and api[i][0] < e:
            a0, a1, nid = api[i]
            o = min(a1, e) - max(a0, s)
            if o > 0:
                over[names.get(nid, "?")] += o
            i += 1
        calls = ", ".join(f"{k} {v / 1e3:.0f}" for k, v in sorted(over.items(), key=lambda kv: -kv[1])[:4])
        print(f"  gap {d / 1e3:8.1f} us after {before[:40]!r} before {after[:40]!r}; host calls in it (us): {calls}")
    if api:
        agg = defaultdict(lambda: [0, 0])
        for a0, a1, nid in api:
            agg[names.get(nid, "?")][0] += a1 - a0
            agg[names.get(nid, "?")][1] += 1
        print(f"## CUDA runtime calls by total time (us per unit of {per}): total, count")
        for n, (t, c) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:14]:
            print(f"  {t / 1e3 / per:10.1f} us {c / per:8.1f}  {n}")


if __name__ == "__main__":
    main()
