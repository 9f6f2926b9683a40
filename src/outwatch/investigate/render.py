"""Human views: attacker-controlled text is escaped before it reaches a terminal, and kept short."""

from __future__ import annotations

from outwatch.event import rfc3339_ns
from outwatch.investigate.audit import AuditResult
from outwatch.investigate.common import THRESHOLDS
from outwatch.investigate.hunt import CHECK_ORDER, CHECK_TITLES, HuntResult
from outwatch.pretty import safe

_MAX_CHILDREN_SHOWN = 50


def argv_text(args: list[str] | None, limit: int = 160) -> str:
    if not args:
        return ""
    return safe(" ".join(args), limit)


def score_tag(event: dict) -> str:
    ow = event.get("outwatch", {})
    return f"{ow.get('score', 0):>3} {ow.get('severity', 'info'):<8}"


def reasons_text(event: dict) -> list[str]:
    return [f"+{r['score']} {r['rule']}: {safe(r['why'], 200)}" for r in event.get("outwatch", {}).get("reasons", [])]


def endpoint(ip: str | None, port: int | None) -> str:
    if ip is None:
        return "*"
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port is not None else host


def chain_text(extra: dict, limit: int = 6) -> str:
    """parent <- grandparent <- ... as name(pid), the way `ps auxf` would make you read it."""
    levels = extra.get("ancestors", [])
    parts = [f"{safe(a.get('name', '?'), 40)}({a['pid']})" for a in levels[:limit]]
    if len(levels) > limit:
        parts.append(f"... {len(levels) - limit} more")
    return " <- ".join(parts)


def connection_lines(event: dict, indent: str = "") -> list[str]:
    """A scored connection finding as a short block: score, flow, process, parents, why."""
    src, dst = event.get("source", {}), event.get("destination", {})
    sock = event.get("outwatch", {}).get("socket", {})
    netns = f"  (netns {sock['netns']})" if "netns" in sock else ""
    lines = [
        f"{indent}{score_tag(event)} {event['network']['transport']:<3} {sock.get('state', ''):<11} "
        f"{endpoint(src.get('ip'), src.get('port'))} -> {endpoint(dst.get('ip'), dst.get('port'))}{netns}"
    ]
    pad = indent + " " * 13
    process = event.get("process")
    user = event.get("user", {})
    who = safe(user.get("name") or user.get("id", "?"), 20)
    if process:
        exe = safe(process.get("executable") or f"[{process.get('name', '?')}]", 80)
        args = argv_text(process.get("args", [])[1:], 100)
        lines.append(f"{pad}pid {process['pid']} {who} {exe} {args}".rstrip())
        extra = event.get("outwatch", {}).get("process", {})
        where = [f"parents: {chain_text(extra)}"] if extra.get("ancestors") else []
        where += [f"unit {safe(extra['unit'], 80)}"] if extra.get("unit") else []
        where += [f"container {extra['container_id'][:12]}"] if extra.get("container_id") else []
        if where:
            lines.append(f"{pad}{' · '.join(where)}")
    else:
        lines.append(f"{pad}uid {user.get('id', '?')} ({who}): process not visible")
    missing = event.get("outwatch", {}).get("missing")
    if missing and process:
        lines.append(f"{pad}partial: " + ", ".join(f"{k}: {v}" for k, v in missing.items()))
    lines += [f"{pad}why {r}" for r in reasons_text(event)]
    return lines


def inspection_lines(record: dict, connections: list[dict]) -> list[str]:
    """The inspect report: one labelled line (or block) per question a responder asks."""
    p = record["process"]
    ow = record["outwatch"]
    extra, info = ow.get("process", {}), ow.get("inspect", {})
    out = [f"pid {p['pid']} {safe(p.get('name', '?'), 40)}   score {score_tag(record).strip()}"]
    out += [f"  why         {r}" for r in reasons_text(record)]
    if ow.get("missing"):
        out.append("  PARTIAL     " + "; ".join(f"{k}: {v}" for k, v in ow["missing"].items()))
    exe = info.get("executable") or {}
    if info.get("state"):
        out.append(f"  executable  none ({info['state']})")
    elif exe:
        flags = [
            w for w, on in (("DELETED", exe.get("deleted") and not exe.get("memfd")), ("MEMFD", exe.get("memfd"))) if on
        ]
        out.append(f"  executable  {safe(exe['path'])}{' (' + ', '.join(flags) + ')' if flags else ''}")
        owner = exe["owner"].get("name") or exe["owner"]["id"]
        out.append(
            f"              owner {safe(owner, 32)}  mode {exe['mode']}  mtime {exe['mtime']}  size {exe['size']}"
        )
        if exe.get("sha256"):
            out.append(f"              sha256 {exe['sha256']}")
        pkg = exe.get("package")
        if pkg:
            check = {"match": ", checksum matches", "DIFFERS": ", CHECKSUM DIFFERS from the package"}
            out.append(
                f"              package {pkg['name']} ({pkg['listed_path']}{check.get(pkg.get('checksum', ''), '')})"
            )
        elif not exe.get("memfd"):
            out.append("              package: none (not installed by dpkg)")
        if exe.get("on_disk_now"):
            out.append(f"              on disk now: {exe['on_disk_now']}")
    else:
        out.append(f"  executable  unknown ({ow.get('missing', {}).get('process.executable', 'kernel thread')})")
    out.append(f"  argv        {argv_text(p.get('args'), 300) or '(empty)'}")
    if p.get("working_directory"):
        out.append(f"  cwd         {safe(p['working_directory'])}")
    out.append(f"  user        {_user_text(p)}")
    out.append(f"  started     {p.get('start', '?')} (age {_age(p.get('uptime'))})")
    unit = extra.get("unit")
    origin = info.get("origin")
    place = [f"unit {safe(unit, 80)}" if unit else "no systemd unit"]
    if extra.get("user_unit"):
        place.append(f"user unit {safe(extra['user_unit'], 80)}")
    if extra.get("container_id"):
        place.append(f"container {extra['container_id']}")
    if origin:
        place.append(f"started by {origin['kind']} ({safe(origin['via'], 60)})")
    out.append(f"  origin      {', '.join(place)}")
    env = p.get("env_vars")
    if env:
        out += [f"  {'environment' if i == 0 else '':<11} {safe(item, 300)}" for i, item in enumerate(env)]
    ancestors = extra.get("ancestors", [])
    for i, a in enumerate(ancestors):
        label = "ancestry" if i == 0 else ""
        line = f"{a['pid']:>7} {safe(a.get('name', '?'), 20):<16} {safe(a.get('executable', '?'), 60)}"
        out.append(f"  {label:<11} {line}  {argv_text(a.get('args', [])[1:], 80)}".rstrip())
    children = info.get("children", [])
    for i, c in enumerate(children[:_MAX_CHILDREN_SHOWN]):
        label = "children" if i == 0 else ""
        tree = "  " * (c.get("depth", 1) - 1)
        out.append(f"  {label:<11} {tree}{c['pid']:>7} {safe(c.get('name', '?'), 20)} {argv_text(c.get('args'), 100)}")
    if len(children) > _MAX_CHILDREN_SHOWN:
        out.append(f"  {'':<11} ... {len(children) - _MAX_CHILDREN_SHOWN} more (--json lists all)")
    sockets = info.get("sockets", [])
    for i, s in enumerate(sockets):
        label = "sockets" if i == 0 else ""
        remote = f" -> {endpoint(s['remote']['ip'], s['remote']['port'])}" if "remote" in s else ""
        local = endpoint(s["local"]["ip"], s["local"]["port"])
        out.append(f"  {label:<11} {s['transport']} {s['state']} {local}{remote} ({s.get('direction', '-')})")
    for c in connections:
        out += [
            "  connection  " + line.lstrip() if j == 0 else "  " + line for j, line in enumerate(connection_lines(c))
        ]
    for i, m in enumerate(info.get("odd_mappings", [])):
        out.append(f"  {'libraries' if i == 0 else '':<11} {safe(m['path'])} ({m['perms']}): {m['why']}")
    for i, f in enumerate(info.get("temp_files", [])):
        gone = " (deleted)" if f["deleted"] else ""
        out.append(f"  {'temp files' if i == 0 else '':<11} fd {f['fd']} {safe(f['path'])}{gone}")
    journal = info.get("journal", {})
    if "unavailable" in journal:
        out.append(f"  journal     unavailable: {safe(journal['unavailable'])}")
    elif journal.get("lines"):
        out += [f"  {'journal' if i == 0 else '':<11} {safe(line, 200)}" for i, line in enumerate(journal["lines"])]
    else:
        out.append(f"  journal     no entries ({journal.get('query', '')})")
    return out


def _user_text(p: dict) -> str:
    def name(u: dict) -> str:
        return f"{u.get('name', '?')}({u['id']})"

    text = name(p["user"]) if p.get("user") else "?"
    real = p.get("real_user")
    if real and real != p.get("user"):
        text += f" (real {name(real)})"
    groups = p.get("supplemental_groups")
    if p.get("group"):
        text += f"  group {name(p['group'])}"
    if groups:
        text += "  groups " + ",".join(name(g) for g in groups)
    return safe(text, 300)


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    parts += [f"{minutes}m", f"{secs}s"] if not days else [f"{minutes}m"]
    return "".join(parts)


def hunt_lines(result: HuntResult, shown_per_check: int = 25) -> list[str]:
    """Findings grouped by check, riskiest first; those scoring under `low` are only counted."""

    where = f"image at {result.root}" if result.root else "this host"
    out = [f"hunt on {where}, window since {rfc3339_ns(result.since_ns)[:19]}Z"]
    flagged_total = 0
    for check in CHECK_ORDER:
        findings = result.by_check.get(check, [])
        flagged = [f for f in findings if f["outwatch"]["score"] >= THRESHOLDS.low]
        flagged_total += len(flagged)
        examined = result.examined.get(check, 0)
        source = f"; from {result.auth_source}" if check == "auth" and result.auth_source else ""
        out.append(f"\n== {CHECK_TITLES[check]}: {examined} examined, {len(flagged)} flagged{source}")
        for event in flagged[:shown_per_check]:
            out.append(f"  {score_tag(event)} {safe(event['message'], 160)}")
            ow = event["outwatch"]
            out += [f"               {r}" for r in reasons_text(event)]
            for hit in ow["hunt"].get("lines", [])[:3]:
                out.append(f"               line {hit['line']}: {safe(hit['text'], 140)}")
            if event.get("file", {}).get("hash"):
                out.append(f"               sha256 {event['file']['hash']['sha256']}")
        if len(flagged) > shown_per_check:
            out.append(f"  ... {len(flagged) - shown_per_check} more flagged (--json lists all)")
        quiet = len(findings) - len(flagged)
        if quiet:
            out.append(f"  ({quiet} more scored below {THRESHOLDS.low}: listed with --json)")
    out.append(f"\n{flagged_total} finding(s) flagged")
    return out


def audit_lines(result: AuditResult) -> list[str]:
    """Sections in the order a responder tightens things, then the verdict list."""
    sections = (
        ("listening sockets (ss -tulnp, plus raw and packet sockets)", ("listening_socket",)),
        ("services", ("service_running",)),
        ("firewall", ("firewall_state",)),
        ("processes from odd places, or running replaced code", ("odd_process", "stale_process")),
        ("executables in temp dirs", ("temp_executable", "mount_exec")),
        ("ssh", ("sshd_config",)),
    )
    out = []
    for title, actions in sections:
        items = [e for e in result.findings if e["event"]["action"] in actions]
        out.append(f"== {title}: {len(items)}")
        for event in items[:40]:
            out.append(f"  {score_tag(event)} {safe(event['message'], 160)}")
            out += [f"               {r}" for r in reasons_text(event)]
        if len(items) > 40:
            out.append(f"  ... {len(items) - 40} more (--json lists all)")
    out.append("\nwhat to tighten:")
    out += [f"  - {safe(v, 300)}" for v in result.verdicts] or ["  nothing obvious"]
    return out
