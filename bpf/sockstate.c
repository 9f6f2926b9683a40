/* outwatch: how a TCP connect went. SYN_SENT (in the connecting thread: source address and port),
 * then ESTABLISHED (success) or CLOSE (failure), and the error that closed it (ECONNREFUSED,
 * ETIMEDOUT, ...). Only sockets seen entering SYN_SENT are followed. The source port is not chosen
 * yet at SYN_SENT: it is known from ESTABLISHED / CLOSE on.
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
    int start = from == OW_TCP_CLOSE && to == OW_TCP_SYN_SENT;
    int finish = from == OW_TCP_SYN_SENT && (to == OW_TCP_ESTABLISHED || to == OW_TCP_CLOSE);
    if (!start && !finish)
        return 0;

    u64 sk = (u64)args->skaddr;
    if (start) {
        u16 family = args->family;
        u8 daddr[16] = {};
        if (family == AF_INET)
            bpf_probe_read_kernel(daddr, 4, args->daddr);
        else
            bpf_probe_read_kernel(daddr, 16, args->daddr_v6);
        if (ow_is_self() || ow_skip_loopback(family, daddr))
            return 0;
        u8 one = 1;
        connecting.update(&sk, &one);
    } else {
        if (!connecting.lookup(&sk))
            return 0;
        connecting.delete(&sk);
        if (to == OW_TCP_CLOSE) {
            struct ow_flow_key k = {};
            ow_flow_key_v(&k, args->family, args->daddr, args->daddr_v6, args->sport, args->dport);
            u8 one = 1;
            closed_connects.update(&k, &one);
        }
    }

    struct ow_tcpstate *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        ow_count_lost(OW_EV_TCPSTATE);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    ow_fill_header(&e->h, OW_EV_TCPSTATE);
    e->skaddr = (u64)args->skaddr;
    e->family = args->family;
    e->sport = args->sport;
    e->dport = args->dport;
    e->oldstate = from;
    e->newstate = to;
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

TRACEPOINT_PROBE(sock, inet_sk_error_report)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct ow_flow_key k = {};
    ow_flow_key_v(&k, args->family, args->daddr, args->daddr_v6, args->sport, args->dport);
    if (!closed_connects.lookup(&k))
        return 0;
    closed_connects.delete(&k);

    struct ow_tcpstate *e = events.ringbuf_reserve(sizeof(*e));
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
