/* outwatch: how a TCP connect went. The connect's record waits in tcp_by_tid from the hook; at
 * SYN_SENT (still in the connecting thread) it moves to tcp_by_sk, keyed by the socket; at ESTABLISHED
 * (success) or CLOSE (failure) it gets its source address and port and is sent: one record per
 * connect. The error that closed a failed connect (ECONNREFUSED, ETIMEDOUT...) follows as a small
 * record of its own, matched on the 4-tuple.
 * Tracepoint fields are copied with bpf_probe_read_kernel: the verifier refuses loads through an
 * offset ctx pointer, which is what a memcpy from args->array becomes. */

#define OW_TCP_ESTABLISHED 1
#define OW_TCP_SYN_SENT 2
#define OW_TCP_CLOSE 7

static __always_inline void ow_flow_key_v(struct ow_flow_key *k, u16 family, const u8 *d4, const u8 *d6,
                                          u16 sport, u16 dport)
{
    k->family = family;
    k->sport = sport;
    k->dport = dport;
    if (family == AF_INET)
        bpf_probe_read_kernel(k->daddr, 4, d4);
    else
        bpf_probe_read_kernel(k->daddr, 16, d6);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    int from = args->oldstate;
    int to = args->newstate;
    u64 sk = (u64)args->skaddr;

    if (from == OW_TCP_CLOSE && to == OW_TCP_SYN_SENT) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        struct ow_connect *c = tcp_by_tid.lookup(&tid);
        if (!c)
            return 0;
        if (tcp_by_sk.update(&sk, c) != 0)
            ow_emit_connect(c); /* no room to wait: sent now, outcome unknown */
        tcp_by_tid.delete(&tid);
        return 0;
    }
    if (from != OW_TCP_SYN_SENT || (to != OW_TCP_ESTABLISHED && to != OW_TCP_CLOSE))
        return 0;

    struct ow_connect *c = tcp_by_sk.lookup(&sk);
    if (!c)
        return 0;
    c->outcome = to == OW_TCP_ESTABLISHED ? OW_OUTCOME_SUCCESS : OW_OUTCOME_FAILURE;
    c->sport = args->sport;
    if (args->family == AF_INET) {
        bpf_probe_read_kernel(c->saddr, 4, args->saddr);
    } else if (c->family == AF_INET) {
        /* an IPv4-mapped destination on an IPv6 socket: the source is mapped too */
        bpf_probe_read_kernel(c->saddr, 4, (u8 *)args->saddr_v6 + 12);
    } else {
        bpf_probe_read_kernel(c->saddr, 16, args->saddr_v6);
    }
    ow_emit_connect(c);
    tcp_by_sk.delete(&sk);
    if (to == OW_TCP_CLOSE) {
        struct ow_flow_key k = {};
        ow_flow_key_v(&k, args->family, args->daddr, args->daddr_v6, args->sport, args->dport);
        u8 one = 1;
        closed_connects.update(&k, &one);
    }
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sk_error_report)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct ow_flow_key k = {};
    ow_flow_key_v(&k, args->family, args->daddr, args->daddr_v6, args->sport, args->dport);
    if (!closed_connects.lookup(&k))
        return 0;
    closed_connects.delete(&k);

    struct ow_tcperror *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        ow_count_lost(OW_EV_TCPERROR);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    ow_fill_header(&e->h, OW_EV_TCPERROR);
    e->family = args->family;
    e->sport = args->sport;
    e->dport = args->dport;
    e->error = args->error;
    if (args->family == AF_INET) {
        bpf_probe_read_kernel(e->saddr, 4, args->saddr);
        bpf_probe_read_kernel(e->daddr, 4, args->daddr);
    } else {
        bpf_probe_read_kernel(e->saddr, 16, args->saddr_v6);
        bpf_probe_read_kernel(e->daddr, 16, args->daddr_v6);
    }
    events.ringbuf_submit(e, 0);
    return 0;
}
