"""docs/benchmarks.md and the printed summary, from the rows bench/run.py collected."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from tools import percentile, summarize

if TYPE_CHECKING:
    from run import Results

RSS_TARGET_MB = 200
OVERHEAD_TARGET = 0.90
P99_TARGET_MS = 10.0


def _fmt(value: float | None, spec: str = "{:.3g}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _ratios(rows: list[dict], base_rows: list[dict], config: str, workload: str) -> list[float]:
    """rate(config) / rate(no tracer), each round against its own baseline."""
    base = {r["round"]: r["rate"] for r in base_rows if r["config"] == "none" and r["workload"] == workload}
    return [r["rate"] / base[r["round"]] for r in rows
            if r["config"] == config and r["workload"] == workload and base.get(r["round"])]


def _capture(rows: list[dict], config: str, workload: str) -> list[float]:
    return [r["delivered"] / r["attempts"] for r in rows
            if r["config"] == config and r["workload"] == workload and r["attempts"]]


def _sum(rows: list[dict], key: str) -> int | None:
    values = [r.get(key) for r in rows]
    return None if any(v is None for v in values) or not values else sum(values)


class Figures:
    """The numbers the tables and the target checks share."""

    def __init__(self, res: Results) -> None:
        self.res = res
        floods = res.floods
        self.capture = {(c, w): summarize(_capture(floods, c, w)) for c in ("outwatch", "bpftrace")
                        for w in ("tcp4", "tcp6", "udp4")}
        self.ratio = {(c, w): summarize(_ratios(floods, floods, c, w)) for c in ("outwatch", "bpftrace")
                      for w in ("tcp4", "tcp6", "udp4")}
        self.lost = {w: _sum([r for r in floods if r["config"] == "outwatch" and r["workload"] == w], "lost")
                     for w in ("tcp4", "tcp6", "udp4")}
        self.dropped = {w: _sum([r for r in floods if r["config"] == "outwatch" and r["workload"] == w], "dropped")
                        for w in ("tcp4", "tcp6", "udp4")}
        self.full_tcp = [r for r in floods if r["config"] == "outwatch" and r["workload"].startswith("tcp")]
        self.storm = {c: [r for r in res.storms if r["config"] == c] for c in {r["config"] for r in res.storms}}
        lat = defaultdict(list)
        for row in res.latency:
            lat[row["workload"]].extend(row["write_ms"])
        self.latency = dict(lat)
        self.hwm = [r["hwm_mb"] for r in res.footprint if r["tool"] == "outwatch"]

    def targets(self) -> list[list[str]]:
        rows = []
        tcp_ok = bool(self.full_tcp) and all(r["delivered"] == r["attempts"] and r.get("lost") == 0
                                             and r.get("dropped") == 0 for r in self.full_tcp)
        cap = " / ".join(f"{w} {self.capture[('outwatch', w)].text('{:.1%}')}" for w in ("tcp4", "tcp6"))
        rows.append(["Capture 100%, zero kernel loss, TCP generator's top rate",
                     f"{cap}; kernel losses tcp4 {_fmt(self.lost['tcp4'], '{:,}')}, "
                     f"tcp6 {_fmt(self.lost['tcp6'], '{:,}')}; userspace drops tcp4 "
                     f"{_fmt(self.dropped['tcp4'], '{:,}')}, tcp6 {_fmt(self.dropped['tcp6'], '{:,}')} (all rounds)",
                     _verdict(tcp_ok)])
        storms = self.storm.get("outwatch", [])
        storm_ok = bool(storms) and all(r["all_ok"] == r["children"] and r.get("lost") == 0 and r.get("dropped") == 0
                                        for r in storms)
        rows.append([f"Capture 100% of a {storms[0]['children'] if storms else '?'}-process storm "
                     "(exe and parent right)",
                     "; ".join(f"{r['all_ok']}/{r['children']} right, {_fmt(r.get('lost'))} lost, "
                               f"{_fmt(r.get('dropped'))} dropped" for r in storms),
                     _verdict(storm_ok)])
        tcp4 = self.ratio[("outwatch", "tcp4")]
        tcp6 = self.ratio[("outwatch", "tcp6")]
        rows.append([f"Overhead ratio ≥ {OVERHEAD_TARGET} for TCP connects",
                     f"tcp4 {tcp4.text('{:.2f}')}, tcp6 {tcp6.text('{:.2f}')}",
                     _verdict(tcp4.n > 0 and tcp4.median >= OVERHEAD_TARGET and tcp6.median >= OVERHEAD_TARGET)])
        for label, values in self.latency.items():
            if values:
                p99 = percentile(values, 99)
                rows.append([f"p99 latency < {P99_TARGET_MS:.0f} ms ({label})",
                             f"p50 {percentile(values, 50):.2f} ms, p99 {p99:.2f} ms", _verdict(p99 < P99_TARGET_MS)])
        peak = max(self.hwm) if self.hwm else None
        rows.append([f"RSS < {RSS_TARGET_MB} MB", f"peak {_fmt(peak, '{:.0f}')} MB (VmHWM)",
                     _verdict(peak is not None and peak < RSS_TARGET_MB)])
        for w in ("tcp4", "tcp6"):
            ow, bt = self.capture[("outwatch", w)], self.capture[("bpftrace", w)]
            rows.append([f"Capture at least the bpftrace one-liner's ({w})",
                         f"outwatch {ow.text('{:.1%}')} vs bpftrace {bt.text('{:.1%}')}",
                         _verdict(ow.n > 0 and bt.n > 0 and ow.median >= bt.median)])
        bt_storm = self.storm.get("bpftrace", [])
        if storms and bt_storm:
            ow_s = summarize([r["all_ok"] / r["children"] for r in storms])
            bt_s = summarize([r["captured"] / r["children"] for r in bt_storm])
            rows.append(["Capture at least the bpftrace one-liner's (storm)",
                         f"outwatch {ow_s.text('{:.1%}')} (attributed) vs bpftrace {bt_s.text('{:.1%}')} (pid seen)",
                         _verdict(ow_s.median >= bt_s.median)])
        return rows


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _facts(res: Results) -> str:
    f = res.facts
    rows = [["date", f["date"]], ["nproc", str(f["nproc"])], ["CPU", f["cpu"]], ["memory", f"{f['memory_gb']} GB"],
            ["kernel", f["kernel"]], ["python", f["python"]], ["outwatch commit", f["commit"]],
            ["peer", f["bpftrace"]], ["load average before", " ".join(f["load_before"])],
            ["benchmark run time", f"{res.runtime_s:.0f} s"]]
    return _table(["fact", "value"], rows)


def _capture_table(fig: Figures) -> str:
    rows = []
    res = fig.res
    for w in ("tcp4", "tcp6", "udp4"):
        base = summarize([r["rate"] for r in res.floods if r["config"] == "none" and r["workload"] == w])
        for c in ("outwatch", "bpftrace"):
            mine = [r for r in res.floods if r["config"] == c and r["workload"] == w]
            if not mine:
                continue
            rate = summarize([r["rate"] for r in mine])
            attempts = summarize([r["attempts"] for r in mine])
            if c == "outwatch":
                lost = _fmt(_sum(mine, "lost"), "{:,}")
                dropped = _fmt(_sum(mine, "dropped"), "{:,}")
                silent = _fmt(_unaccounted(mine), "{:,}")
            else:
                lost = f"{_fmt(_sum(mine, 'peer_lost'), '{:,}')} (bpftrace's own count, whole session)"
                dropped = silent = "—"
            rows.append([w, c, base.text("{:,.0f}"), rate.text("{:,.0f}"), attempts.text("{:,.0f}"),
                         fig.capture[(c, w)].text("{:.2%}"), lost, dropped, silent])
    return _table(["workload", "tool", "rate alone /s", "rate with tool /s", "attempts", "delivered / attempts",
                   "kernel losses (sum of rounds)", "userspace drops (sum)", "missing, not counted (sum)"], rows)


def _unaccounted(rows: list[dict]) -> int | None:
    """Attempts neither delivered nor counted as lost or dropped: a silent loss (UDP: sends)."""
    if any(r.get("lost") is None or r.get("dropped") is None for r in rows):
        return None
    return sum(max(0, r["attempts"] - r["delivered"] - r["lost"] - r["dropped"]) for r in rows)


def _storm_table(fig: Figures) -> str:
    rows = []
    for config, runs in fig.storm.items():
        captured = summarize([r["captured"] / r["children"] for r in runs])
        right = summarize([r["all_ok"] / r["children"] for r in runs]) if runs[0]["all_ok"] is not None else None
        detail = ""
        if config == "outwatch":
            detail = "; ".join(f"exe {r['exe_ok']}, parent {r['parent_ok']}, args {r['args_ok']}" for r in runs)
        life = summarize([r["life_ms_p50"] for r in runs])
        ow = config == "outwatch"
        rows.append([config, str(runs[0]["children"]), captured.text("{:.1%}"),
                     right.text("{:.1%}") if right else "not reported", detail or "—",
                     _fmt(_sum(runs, "lost"), "{:,}") if ow else "—",
                     _fmt(_sum(runs, "dropped"), "{:,}") if ow else "—",
                     f"{life.text('{:.2f}')} / {max(r['life_ms_max'] for r in runs):.2f}"])
    return _table(["tool", "children", "seen", "exe, parent and argv right", "right per field (per round)",
                   "kernel losses", "userspace drops", "child life p50 / max ms"], rows)


def _overhead_table(fig: Figures) -> str:
    rows = []
    for w in ("tcp4", "tcp6", "udp4"):
        rows.append([w, fig.ratio[("outwatch", w)].text("{:.3f}"), fig.ratio[("bpftrace", w)].text("{:.3f}")])
    return _table(["workload", "outwatch full mode / none", "bpftrace / none"], rows)


def _stage_table(fig: Figures) -> str:
    res = fig.res
    rows = []
    for st in res.stage_defs:
        mine = [r for r in res.stages if r["config"] == st.label]
        if not mine:
            continue
        ratio = summarize(_ratios(res.stages, res.floods, st.label, "tcp4"))
        cpu = summarize([r["cpu_us_per_connect"] for r in mine])
        settle = summarize([r["settle_s"] for r in mine])
        hwm = summarize([r["hwm_mb"] for r in mine])
        rows.append([st.label, st.what, ratio.text("{:.3f}"), cpu.text("{:.1f}"), _fmt(_sum(mine, "lost"), "{:,}"),
                     settle.text("{:.1f}"), hwm.text("{:.0f}")])
    return _table(["outwatch configuration", "left out", "tcp4 rate / none", "tracer CPU µs per connect handled",
                   "kernel losses (sum)", "catch-up after flood s", "peak RSS MB"], rows)


def _paced_table(fig: Figures) -> str:
    by_label = defaultdict(list)
    for row in fig.res.paced:
        by_label[row["config"]].append(row)
    rows = []
    for label, runs in by_label.items():
        rows.append([label, summarize([r["rate"] for r in runs]).text("{:,.0f}"),
                     summarize([r["delivered"] / r["attempts"] for r in runs]).text("{:.2%}"),
                     _fmt(_sum(runs, "lost"), "{:,}"), _fmt(_sum(runs, "dropped"), "{:,}"),
                     summarize([r["settle_s"] for r in runs]).text("{:.1f}")])
    return _table(["outwatch full mode, paced TCP v4", "rate /s", "delivered / attempts", "kernel losses (sum)",
                   "userspace drops (sum)", "catch-up after s"], rows)


def _latency_table(fig: Figures) -> str:
    rows = []
    by_label = defaultdict(list)
    for row in fig.res.latency:
        by_label[row["workload"]].append(row)
    for label, runs in by_label.items():
        values = fig.latency[label]
        kernel = [v for r in runs for v in r["kernel_us"]]
        p99s = summarize([percentile(r["write_ms"], 99) for r in runs if r["write_ms"]])
        if not values:
            rows.append([label, "0", "n/a", "n/a", "n/a", "n/a", str(sum(r["unmatched"] for r in runs)), "n/a"])
            continue
        rows.append([label, f"{len(values):,}", f"{percentile(values, 50):.2f}", f"{percentile(values, 99):.2f}",
                     p99s.text("{:.2f}"), f"{max(values):.1f}", f"{sum(r['unmatched'] for r in runs):,}",
                     f"{percentile(kernel, 50):.1f}" if kernel else "n/a"])
    return _table(["workload", "samples", "p50 ms", "p99 ms (pooled)", "p99 ms per round", "max ms",
                   "unpaired events", "generator stamp → kernel @timestamp p50 µs"], rows)


def _top_rate_cpu(fig: Figures) -> str:
    """Why latency at the top rate is what it is: the CPU the generator leaves, against what outwatch
    needs at that rate (both measured in this run)."""
    res = fig.res
    alone = summarize([r["gen_cores"] for r in res.floods
                       if r["config"] == "none" and r["workload"] == "tcp4" and r.get("gen_cores") is not None])
    full = summarize([r["cpu_us_per_connect"] for r in res.stages if r["config"] == "full mode"])
    rate = summarize([r["rate"] for r in res.floods if r["config"] == "outwatch" and r["workload"] == "tcp4"])
    fastest = f"tcp4 paced {max(res.params['paced_rates']):,.0f}/s"  # the latency rows' label
    if not (alone.n and full.n and rate.n and fig.latency.get(fastest)):
        return ""
    nproc = res.facts.get("nproc") or 0
    need = full.median * rate.median / 1e6
    return (f"CPU at the TCP v4 top rate: the generator alone keeps {alone.median:.2f} of the {nproc} cores "
            f"busy (its user and system time; the kernel's loopback work for both ends is mostly charged to "
            f"it). outwatch in full mode needs {full.median:.1f} µs per connect, {need:.2f} of a core at the "
            f"{rate.median:,.0f} connects/s it runs at beside it: {alone.median + need:.2f} cores asked of "
            f"{nproc}, before the arrival stamper and the rest of the machine. At the top rate records wait "
            f"for a CPU, not for the pipeline; paced below it ({fastest}) p99 is "
            f"{percentile(fig.latency[fastest], 99):.2f} ms.")


def _footprint_table(fig: Figures) -> str:
    rows = []
    for tool in ("outwatch", "bpftrace"):
        mine = [r for r in fig.res.footprint if r["tool"] == tool]
        if not mine:
            continue
        hwm = summarize([r["hwm_mb"] for r in mine])
        cpu = summarize([r["cpu_per_100k"] for r in mine if r["cpu_per_100k"] is not None])
        attach = summarize([r["attached_s"] for r in mine])
        first = summarize([r["first_event_s"] for r in mine if r.get("first_event_s") is not None])
        stop = summarize([r["stop_s"] for r in mine])
        startup_cpu = summarize([r["startup_cpu_s"] for r in mine if "startup_cpu_s" in r])
        events = summarize([r["events"] for r in mine])
        rows.append([tool, hwm.text("{:.0f}"), cpu.text("{:.2f}"), events.text("{:,.0f}"), attach.text("{:.2f}"),
                     first.text("{:.2f}"), startup_cpu.text("{:.2f}"), stop.text("{:.2f}")])
    return _table(["tool", "peak RSS MB", "CPU s per 100k events", "events per session", "start → attached s",
                   "start → first event s", "start-up CPU s", "SIGINT → exit s"], rows)


def _micro_table(res: Results) -> str:
    rows = [[m.name, _fmt(m.us_per_op, "{:.2f}"), m.note] for m in res.micro]
    return _table(["step", "µs per event", "input"], rows)


def _profile_section(res: Results) -> str:
    p = res.profile
    if p is None:
        return "Not run (see the notes)."
    head = (f"py-spy, {p.samples:,} samples at 250 Hz of the tracer in full mode during a 2 s TCP v4 flood "
            f"({p.connects:,} connects at {p.rate:,.0f}/s) and the catch-up after it; the thread holding "
            "the GIL is sampled (Python work of any thread; time in system calls that release the GIL, "
            "like the sink's writev, is not counted).\n\n")
    own = _table(["function (on top of the stack)", "share of samples"],
                 [[f"`{name}`", f"{share:.1%}"] for name, share in p.self_top])
    incl = _table(["function (anywhere in the stack)", "share of samples"],
                  [[f"`{name}`", f"{share:.1%}"] for name, share in p.inclusive_top])
    return head + own + "\n\n" + incl


METHOD = """\
- **Load generators** (`bench/*.c`, compiled by `bench/run.py` with the system `cc` into
  `bench/build/`): `connect_gen tcp4|tcp6|udp4` floods a loopback listener of its own (an acceptor
  thread) for {flood} s at the highest rate it can (`socket`, `connect`, `getsockname`, `close` with
  `SO_LINGER` 0 so no TIME_WAIT piles up; UDP: `sendto` on one socket), and reports attempts and
  successes, and with `-o` one record per attempt (CLOCK_REALTIME ns before the call, local port).
  `storm` spawns `storm_child` (static; connect once to 127.0.0.1, exit) {storm} times, {inflight} at a
  time, and lists every child's pid, parent pid and executable.
- **Rounds**: {rounds} rounds; each round runs every configuration (no tracer; outwatch in full mode;
  bpftrace; outwatch with one stage left out), in an order rotated each round. Ratios are computed
  against the same round's no-tracer run; tables give the median over rounds and (min–max).
- **outwatch** runs as `outwatch watch --format ndjson --output FILE --include-loopback
  --metrics-interval 0.5` (root). Between workloads the benchmark waits until the tracer is idle
  (≤ 30 ms of CPU in 300 ms: it has caught up), then reads the next metric record: kernel losses
  per workload are differences of `lost_in_kernel` between those records.
- **Capture** = connect events in the NDJSON whose `process.pid` is the generator / attempts (TCP), or
  the sum of `outwatch.repeat` / `sendto` calls (UDP: repeats are counted in the kernel, one event per
  flow per second). "Missing, not counted" = attempts − delivered − kernel losses − userspace drops
  (outwatch promises no silent loss; kernel losses count records, one per TCP connect). Storm: a
  child counts as right when its event has `process.executable` = the child's path,
  `process.parent.pid` = the storm's pid and `process.args` = its argv.
  bpftrace: lines printed with the generator's pid (or a child's pid; the one-liner prints pid and
  comm, not the parent or the executable). `ss -tpn` polled once a second during the storm (no
  tracer): children seen owning a socket.
- **Rate sweep**: in the same outwatch session, `connect_gen tcp4 -r RATE` paced at {paced} connects/s
  for 2 s each: capture, kernel losses and latency below the top rate.
- **Overhead** = the generator's rate with the tool running / without it, same round. The stage rows
  run outwatch against the TCP v4 flood only, with one part of the pipeline left out using the flags
  that exist (no flag was added for this): output to /dev/null, all rules disabled by a rules file,
  pretty format, `--port 1` (every connect filtered out after the process-table lookup), and no
  `--include-loopback` (the BPF programs run and drop loopback connects in the kernel). Tracer CPU per
  connect handled = the tracer's CPU from attached to exit (wait4 rusage minus the CPU at attach) /
  connect records not lost in the kernel; kernel losses of these rows are read from outwatch's `lost`
  map with bpftool (through the map fds the tracer holds), since /dev/null and pretty output carry no
  readable metric record.
- **Latency**: `tail_stamp` (inotify on the NDJSON file) stamps each line with CLOCK_REALTIME when its
  write becomes readable; each event is paired with the generator's attempt by source port (the
  latest attempt on that port before the event's kernel time) and latency = line readable −
  generator's stamp before `connect()`. It includes the kernel hook, the TCP outcome (ESTABLISHED, a
  few µs on loopback), the ring buffer, enrichment, scoring, the sink queue and the write. Events
  without a source port (outcome unknown) are not paired. The last column checks the event's
  kernel-time `@timestamp` against the generator's clock.
- **Footprint**: peak RSS = VmHWM just before SIGINT (the peak of the tracer's own image; wait4's
  ru_maxrss is not used: Linux carries into it the size of the forked benchmark process from before
  the exec); CPU per 100k events = tracer CPU
  after attach / events emitted; start-up: spawn → "outwatch: probes:" on stderr (attached, table
  seeded) and spawn → first event line of a 200/s prober started just before the tracer.
- **Profile**: py-spy samples the tracer from outside (no change to it) during one more TCP v4 flood.
"""


def markdown(res: Results) -> str:
    fig = Figures(res)
    p = res.params
    parts = [
        "# Benchmarks",
        "Written by `make bench` (`bench/run.py`); do not edit by hand. Numbers are from one run on the "
        "machine below; the machine is shared and noisy, so every figure is a ratio measured in the "
        "same run, interleaved, over several rounds: median (min–max).",
        "## Machine", _facts(res),
        "## Targets (issue 7)", _table(["target", "measured", "verdict"], fig.targets()),
        "## 1. Capture", "Floods at the generator's top rate:", _capture_table(fig),
        "Below the top rate (the rate sweep, in the same outwatch sessions):", _paced_table(fig),
        f"Process storm ({p['storm_n']:,} short-lived processes):", _storm_table(fig),
        "## 2. Overhead", "Generator rate with the tool / without it, same round:", _overhead_table(fig),
        "Where the cost is (TCP v4 flood, outwatch with one stage left out):", _stage_table(fig),
        "## 3. Latency (connect → NDJSON line readable)", _latency_table(fig), _top_rate_cpu(fig),
        "## 4. Footprint", _footprint_table(fig),
        "## 5. Peers", "bpftrace rows are in the capture, overhead and footprint tables above; `ss -tpn` "
        "polling is the `ss -tpn (1/s)` row of the storm table. The bpftrace one-liner:",
        "```\n" + _bpftrace_script() + "\n```",
        "## Microbenchmarks (per event, userspace)", _micro_table(res),
        "## Where the time goes (profile)", _profile_section(res),
        "## Method", METHOD.format(flood=p["flood_s"], storm=p["storm_n"], inflight=p["inflight"],
                                  rounds=p["rounds"], paced=", ".join(f"{r:,.0f}" for r in p["paced_rates"])),
    ]
    if res.notes:
        parts += ["## Notes", "\n".join(f"- {n}" for n in res.notes)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _bpftrace_script() -> str:
    from sessions import BPFTRACE_SCRIPT

    return BPFTRACE_SCRIPT.strip()


def summary(res: Results) -> str:
    fig = Figures(res)
    lines = ["", "outwatch benchmark: targets (issue 7)"]
    for target, measured, verdict in fig.targets():
        lines.append(f"  {verdict.strip('*'):7} {target}: {measured}")
    lines.append("")
    lines.append("  overhead ratio (median): " + ", ".join(
        f"{w} {fig.ratio[('outwatch', w)].text('{:.2f}')}" for w in ("tcp4", "tcp6", "udp4")))
    lines += [f"  {m.name}: {_fmt(m.us_per_op, '{:.2f}')} µs" for m in res.micro]
    lines += [f"  note: {n}" for n in res.notes]
    return "\n".join(lines)
