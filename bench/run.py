"""`make bench`: outwatch's capture, overhead, latency and footprint, beside the bpftrace one-liner and
`ss -tpn` polling, on this machine. Root. Writes docs/benchmarks.md and prints a summary.

Every figure is a ratio measured in this run: rounds interleave the configurations (none, outwatch in
full mode, bpftrace, outwatch with one stage disabled, ...), rotating their order, and the tables give
the median and the range over rounds. See docs/benchmarks.md ("Method") for what each number means.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import analyze
import micro
import profile_hot
import report
from sessions import BpftraceSession, Exit, OutwatchSession, SsPoller, kernel_lost
from tools import ROOT, GenResult, StormResult, build, read_attempts, read_stamps, run_gen, run_storm

from outwatch.kernel.records import EV_CONNECT

ROUNDS = 4
FLOOD_S = 2.0
FLOODS = ("tcp4", "tcp6", "udp4")
PACED_RATES = (1000.0, 5000.0, 20000.0)  # the rate sweep: capture and latency below the top rate
PACED_S = 2.0
STORM_N = 2000
STORM_INFLIGHT = 2
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(slots=True)
class Stage:
    label: str
    what: str  # which part of the pipeline this run leaves out
    options: dict


@dataclass(slots=True)
class Results:
    """Rows of plain dicts, one per (round, configuration, workload); report.py turns them into tables."""

    floods: list[dict] = field(default_factory=list)
    paced: list[dict] = field(default_factory=list)
    storms: list[dict] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)
    footprint: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    stage_defs: list[Stage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    micro: list[micro.MicroResult] = field(default_factory=list)
    profile: profile_hot.Profile | None = None
    facts: dict = field(default_factory=dict)
    params: dict = field(default_factory=lambda: {"rounds": ROUNDS, "flood_s": FLOOD_S, "storm_n": STORM_N,
                                                  "inflight": STORM_INFLIGHT, "paced_rates": PACED_RATES})
    runtime_s: float = 0.0


class Bench:
    def __init__(self, workdir: Path, bins: dict[str, Path], results: Results) -> None:
        self.workdir = workdir
        self.bins = bins
        self.results = results

    # -- helpers --------------------------------------------------------------------------------
    def _flood(self, mode: str, log: bool = False, rate: float = 0.0, seconds: float = FLOOD_S) -> GenResult:
        path = self.workdir / f"{mode}-{time.monotonic_ns()}.bin" if log else None
        return run_gen(self.bins["connect_gen"], mode, seconds, rate, path)

    def _storm(self) -> StormResult:
        return run_storm(self.bins["storm"], self.bins["storm_child"], STORM_N, STORM_INFLIGHT,
                         self.workdir / f"storm-{time.monotonic_ns()}.txt")

    @staticmethod
    def _row(rnd: int, config: str, gen: GenResult, **extra: object) -> dict:
        return {"round": rnd, "config": config, "workload": gen.mode, "attempts": gen.attempts,
                "successes": gen.successes, "rate": gen.rate,
                "gen_cores": gen.cpu_s / (gen.elapsed_ns / 1e9) if gen.elapsed_ns else None, **extra}

    # -- configurations -------------------------------------------------------------------------
    def none(self, rnd: int) -> None:
        """The generators alone (the denominators); `ss -tpn` polling during the storm."""
        for mode in FLOODS:
            gen = self._flood(mode)
            self.results.floods.append(self._row(rnd, "none", gen))
        with SsPoller() as ss:
            storm = self._storm()
            time.sleep(1.0)  # one more poll after the last child
        seen = sum(1 for kid in storm.kids if kid.pid in ss.pids)
        self.results.storms.append({"round": rnd, "config": "ss -tpn (1/s)", "children": storm.children,
                                    "ok": storm.ok, "captured": seen, "all_ok": None, "polls": ss.polls,
                                    "life_ms_p50": storm.life_ms_p50, "life_ms_max": storm.life_ms_max})

    def outwatch(self, rnd: int) -> None:
        """Full mode: enrich, score, NDJSON to a file; with start-up prober and arrival stamps."""
        s = OutwatchSession(self.workdir, f"outwatch-{rnd}", tail_stamp=self.bins["tail_stamp"],
                            prober=self.bins["connect_gen"])
        try:
            s.start()
            before = s.metrics()
            gens: list[tuple[GenResult, dict]] = []
            for mode in FLOODS:
                gen = self._flood(mode, log=mode.startswith("tcp"))
                settle_s = s.settle()
                after = s.metrics()
                gens.append((gen, {"settle_s": settle_s, **_losses(before, after)}))
                before = after
            storm = self._storm()
            s.settle()
            after = s.metrics()
            storm_losses = _losses(before, after)
            before = after
            for rate in PACED_RATES:
                gen = self._flood("tcp4", log=True, rate=rate, seconds=PACED_S)
                settle_s = s.settle()
                after = s.metrics()
                gens.append((gen, {"settle_s": settle_s, "paced": rate, **_losses(before, after)}))
                before = after
            exit_ = s.stop()
            final = s.final_metrics()
        finally:
            s.close()
        self._outwatch_figures(rnd, s, gens, storm, storm_losses, exit_, final)
        s.output.unlink(missing_ok=True)
        if s.stamps:
            s.stamps.unlink(missing_ok=True)

    def _outwatch_figures(self, rnd: int, s: OutwatchSession, gens: list[tuple[GenResult, dict]],
                          storm: StormResult, storm_losses: dict, exit_: Exit, final: dict | None) -> None:
        timed = {g.pid for g, _ in gens if g.log}
        kids = {k.pid for k in storm.kids}
        scan = analyze.scan_ndjson(s.output, {g.pid for g, _ in gens} | timed | kids, timed, kids)
        stamps = read_stamps(s.stamps) if s.stamps and s.stamps.exists() else []
        for gen, extra in gens:
            seen = scan.seen.get(gen.pid, analyze.Seen())
            delivered = seen.repeats if gen.mode.startswith("udp") else seen.events
            paced = extra.pop("paced", None)
            if paced:
                self.results.paced.append(self._row(rnd, f"tcp4 paced {paced:,.0f}/s", gen, delivered=delivered,
                                                    **extra))
            else:
                self.results.floods.append(self._row(rnd, "outwatch", gen, delivered=delivered, **extra))
            if gen.log:
                label = f"{gen.mode} paced {paced:,.0f}/s" if paced else f"{gen.mode} top rate"
                self._latency(rnd, label, gen, seen, stamps)
        attr = analyze.storm_attribution(storm, scan.seen)
        self.results.storms.append({"round": rnd, "config": "outwatch", "children": storm.children,
                                    "ok": storm.ok, "captured": attr.captured, "all_ok": attr.all_ok,
                                    "exe_ok": attr.exe_ok, "parent_ok": attr.parent_ok, "args_ok": attr.args_ok,
                                    **storm_losses, "life_ms_p50": storm.life_ms_p50,
                                    "life_ms_max": storm.life_ms_max})
        emitted = int(final.get("events_emitted", 0)) if final else 0
        work_cpu = exit_.cpu_s - s.cpu_ready
        self.results.footprint.append({
            "round": rnd, "tool": "outwatch", "hwm_mb": s.hwm_kb / 1024,
            "cpu_s": work_cpu, "events": emitted, "cpu_per_100k": work_cpu / emitted * 1e5 if emitted else None,
            "startup_cpu_s": s.cpu_ready, "attached_s": s.attached_s, "first_event_s": s.first_event_s,
            "stop_s": exit_.stop_s, "exit_code": exit_.code, "lines": scan.lines,
            "line_bytes": scan.bytes / scan.lines if scan.lines else 0,
            "lost_total": analyze.lost_in_kernel(final),
            "dropped": int(final.get("dropped_in_userspace", 0)) if final else None})

    def _latency(self, rnd: int, label: str, gen: GenResult, seen: analyze.Seen, stamps: list[int]) -> None:
        assert gen.log is not None
        lat = analyze.latencies(read_attempts(gen.log), seen.lines, stamps)
        self.results.latency.append({"round": rnd, "workload": label, "samples": len(lat.write_ms),
                                     "unmatched": lat.unmatched, "attempts": gen.attempts,
                                     "write_ms": lat.write_ms, "kernel_us": lat.kernel_us})
        gen.log.unlink(missing_ok=True)

    def bpftrace(self, rnd: int) -> None:
        s = BpftraceSession(self.workdir, f"bpftrace-{rnd}")
        try:
            s.start()
            gens = []
            for mode in FLOODS:
                gen = self._flood(mode)
                s.settle()
                gens.append(gen)
            storm = self._storm()
            s.settle()
            exit_ = s.stop()
        finally:
            s.close()
        out = analyze.scan_bpftrace(s.output, s.err)
        for gen in gens:
            self.results.floods.append(self._row(rnd, "bpftrace", gen, delivered=out.per_pid.get(gen.pid, 0),
                                                 lost=None, peer_lost=out.lost))
        seen = sum(1 for kid in storm.kids if kid.pid in out.per_pid)
        self.results.storms.append({"round": rnd, "config": "bpftrace", "children": storm.children,
                                    "ok": storm.ok, "captured": seen, "all_ok": None, "peer_lost": out.lost,
                                    "life_ms_p50": storm.life_ms_p50, "life_ms_max": storm.life_ms_max})
        lines = sum(out.per_pid.values())
        self.results.footprint.append({
            "round": rnd, "tool": "bpftrace", "hwm_mb": s.hwm_kb / 1024, "cpu_s": exit_.cpu_s,
            "events": lines, "cpu_per_100k": exit_.cpu_s / lines * 1e5 if lines else None,
            "attached_s": s.attached_s, "first_event_s": None, "stop_s": exit_.stop_s, "exit_code": exit_.code})
        s.output.unlink(missing_ok=True)

    def stage(self, rnd: int, stage: Stage) -> None:
        """outwatch with one stage left out, against the TCP v4 flood only."""
        s = OutwatchSession(self.workdir, f"stage-{rnd}-{len(self.results.stages)}", **stage.options)
        try:
            s.start()
            before = kernel_lost(s.pid)
            gen = self._flood("tcp4")
            settle_s = s.settle()
            after = kernel_lost(s.pid)
            exit_ = s.stop()
        finally:
            s.close()
        lost = {k: v - before[k] for k, v in after.items()} if before and after else None
        handled = gen.attempts - lost[EV_CONNECT] if lost else gen.attempts
        self.results.stages.append(self._row(
            rnd, stage.label, gen, settle_s=settle_s, hwm_mb=s.hwm_kb / 1024,
            cpu_us_per_connect=(exit_.cpu_s - s.cpu_ready) / max(handled, 1) * 1e6,
            lost=sum(lost.values()) if lost else None))
        if s.output.is_file():
            s.output.unlink()


def _losses(before: dict | None, after: dict | None) -> dict:
    """Kernel losses and userspace drops between two metric records."""
    return {"lost": analyze.delta(analyze.lost_in_kernel(after), analyze.lost_in_kernel(before)),
            "dropped": analyze.delta(analyze.dropped(after), analyze.dropped(before))}


def stages(workdir: Path, results: Results) -> list[Stage]:
    """The stage toggles outwatch's CLI offers (no flag was added for the benchmark)."""
    out = [
        Stage("full mode", "nothing (NDJSON to a file, default rules)", {}),
        Stage("NDJSON to /dev/null", "the file write (the sink still runs)", {"to_file": False}),
        Stage("pretty to file", "NDJSON encoding (pretty formatting instead)", {"fmt": "pretty"}),
        Stage("filtered after lookup (--port 1)",
              "event building, scoring, encoding and writing (records still decoded, paired and looked up)",
              {"extra": ("--port", "1")}),
        Stage("loopback dropped in kernel",
              "all userspace work for these connects (without --include-loopback the BPF programs still "
              "run and drop them)", {"loopback": False}),
    ]
    try:
        from outwatch.rules import load_rules

        ids = [rule.id for rule in load_rules().rules]
    except Exception as exc:  # another helper's module; the stage is skipped with the reason
        results.notes.append(f"stage 'all rules disabled' skipped: the rules could not be loaded ({exc})")
    else:
        disable = workdir / "disable-all.toml"
        disable.write_text("disable = [" + ", ".join(f'"{i}"' for i in ids) + "]\n")
        out.insert(1, Stage("all rules disabled", f"scoring ({len(ids)} rules disabled with a rules file)",
                            {"extra": ("--rules", str(disable))}))
    return out


def facts() -> dict:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(), "cpu": cpu,
            "memory_gb": round(mem_kb / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version(), "commit": run(["git", "-C", str(ROOT), "rev-parse", "--short",
                                                                  "HEAD"]),
            "bpftrace": run(["bpftrace", "--version"]), "load_before": Path("/proc/loadavg").read_text().split()[:3]}


def leftover_programs() -> list[str]:
    """The loaded BPF programs named ow_* (outwatch's), as `bpftool prog show` lines."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if " name ow_" in line]


def main() -> int:
    if os.geteuid() != 0:
        print("bench: needs root (outwatch and bpftrace load BPF programs): run `sudo make bench`",
              file=sys.stderr)
        return 1
    for tool in ("bpftrace", "ss", "bpftool"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing: run `make install`", file=sys.stderr)
            return 1
    t0 = time.monotonic()
    try:
        bins = build()
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    results = Results(facts=facts())
    before = leftover_programs()
    if before:
        results.notes.append(f"{len(before)} BPF programs named ow_* (another outwatch on this machine) were "
                             "loaded when the run started: their hooks ran on every connect of every configuration")
    print("bench: microbenchmarks", flush=True)
    results.micro = micro.run()
    workdir = Path(tempfile.mkdtemp(prefix="outwatch-bench-"))
    try:
        bench = Bench(workdir, bins, results)
        results.stage_defs = stages(workdir, results)
        configs: list[tuple[str, Callable[[int], None]]] = [
            ("none", bench.none), ("outwatch", bench.outwatch), ("bpftrace", bench.bpftrace),
            *((st.label, lambda r, st=st: bench.stage(r, st)) for st in results.stage_defs)]
        for rnd in range(ROUNDS):
            shift = rnd * 3 % len(configs)  # rotate so no configuration always runs first or last
            order = configs[shift:] + configs[:shift]
            for name, fn in order:
                print(f"bench: round {rnd + 1}/{ROUNDS}: {name}", flush=True)
                fn(rnd)
        print("bench: profiling the hot path (py-spy)", flush=True)
        results.profile = profile_hot.run(workdir, bins, results.notes)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"bench: failed, nothing written: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
        left = [p for p in leftover_programs() if p not in before]
        if left:
            print("bench: ow_* BPF programs still loaded: " + "; ".join(left), file=sys.stderr)
            results.notes.append("ow_* BPF programs loaded during the run are still loaded (ours, or another "
                                 "outwatch started meanwhile): " + "; ".join(left))
    results.runtime_s = time.monotonic() - t0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(report.markdown(results))
    print(report.summary(results))
    print(f"bench: wrote {DOC.relative_to(ROOT)} in {results.runtime_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
