/* outwatch: what the cgroup hooks and the kprobes share once they know a destination:
 * deny-map check, UDP repeat counting, and the record sent to userspace. */
#ifndef OUTWATCH_CONNECT_H
#define OUTWATCH_CONNECT_H

static __always_inline int ow_rules_deny(struct ow_deny_val *v, u16 dport, u8 protocol)
{
    if (v->all)
        return 1;
#pragma unroll
    for (int i = 0; i < OW_DENY_RULES; i++) {
        if (i >= v->n)
            break;
        struct ow_deny_rule *r = &v->rules[i];
        if ((r->port == 0 || r->port == dport) && (r->protocol == 0 || r->protocol == protocol))
            return 1;
    }
    return 0;
}

static __always_inline int ow_is_denied(struct ow_connect *c)
{
    struct ow_deny_val *v;
    if (c->family == AF_INET) {
        struct ow_deny4_key k = {.prefixlen = 32};
        __builtin_memcpy(k.addr, c->daddr, 4);
        v = deny4.lookup(&k);
    } else {
        struct ow_deny6_key k = {.prefixlen = 128};
        __builtin_memcpy(k.addr, c->daddr, 16);
        v = deny6.lookup(&k);
    }
    return v && ow_rules_deny(v, c->dport, c->protocol);
}

/* An IPv4-mapped IPv6 destination (::ffff:a.b.c.d) is reported and checked as IPv4. */
static __always_inline void ow_unmap_v4(struct ow_connect *c)
{
    u32 w0, w1, w2;
    __builtin_memcpy(&w0, c->daddr, 4);
    __builtin_memcpy(&w1, c->daddr + 4, 4);
    __builtin_memcpy(&w2, c->daddr + 8, 4);
    if (c->family == AF_INET6 && (w0 | w1) == 0 && w2 == bpf_htonl(0xffff)) {
        c->family = AF_INET;
        __builtin_memcpy(c->daddr, c->daddr + 12, 4);
        __builtin_memset(c->daddr + 4, 0, 12);
    }
}

/* UDP: the first send of a flow is reported at once; repeats within OW_UDP_WINDOW_NS are counted
 * and reported with the next send after the window (userspace also sweeps idle flows). Returns 0
 * when this send is only counted. */
static __always_inline int ow_udp_first_or_due(struct ow_connect *c)
{
    struct ow_udp_key k = {};
    k.pid = c->h.pid;
    k.family = c->family;
    k.dport = c->dport;
    k.verdict = c->verdict;
    __builtin_memcpy(k.daddr, c->daddr, 16);

    struct ow_udp_val *v = udp_flows.lookup(&k);
    if (!v) {
        struct ow_udp_val nv = {.window_start_ns = c->h.ts_ns, .repeats = 0};
        udp_flows.update(&k, &nv);
        c->count = 1;
        return 1;
    }
    if (c->h.ts_ns - v->window_start_ns < OW_UDP_WINDOW_NS) {
        __sync_fetch_and_add(&v->repeats, 1);
        return 0;
    }
    c->count = v->repeats + 1;
    v->repeats = 0;
    v->window_start_ns = c->h.ts_ns;
    return 1;
}

/* An allowed TCP connect waits for its outcome in tcp_by_tid (then tcp_by_sk, sockstate.c). A
 * connect of the same thread still waiting there never reached SYN_SENT (it failed early): it is sent
 * first, outcome unknown. Returns 0 when the record was sent, 1 when it waits. */
static __always_inline int ow_tcp_wait(struct ow_connect *c)
{
    u32 tid = c->h.tid;
    struct ow_connect *stale = tcp_by_tid.lookup(&tid);
    if (stale) {
        ow_emit_connect(stale);
        tcp_by_tid.delete(&tid);
    }
    return tcp_by_tid.update(&tid, c) == 0;
}

/* Fills the header, applies the deny map and sends (or holds) the record. Returns 1 to allow the
 * call, 0 to deny it (the cgroup hooks return this; kprobes cannot deny and ignore it). */
static __always_inline int ow_report_connect(struct ow_connect *c, u8 probe)
{
    ow_unmap_v4(c);
    if (ow_skip_loopback(c->family, c->daddr))
        return 1;
    ow_fill_header(&c->h, OW_EV_CONNECT);
    c->probe = probe;
    c->count = 1;
    c->verdict = probe == OW_PROBE_CGROUP && ow_is_denied(c) ? OW_DENIED : OW_ALLOWED;
    int allow = c->verdict == OW_ALLOWED;
    c->outcome = allow ? OW_OUTCOME_UNKNOWN : OW_OUTCOME_FAILURE;
    if (c->protocol == IPPROTO_UDP && !ow_udp_first_or_due(c))
        return allow;
    if (c->protocol == IPPROTO_TCP && allow && ow_tcp_wait(c))
        return allow;
    ow_emit_connect(c);
    return allow;
}

#endif
