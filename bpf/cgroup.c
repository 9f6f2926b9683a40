/* outwatch probe set "cgroup": cgroup v2 sock_addr hooks on the root cgroup, attached with BPF links.
 * They run in the calling thread before the kernel acts on connect()/sendto(): the destination is
 * in the context, and returning 0 makes the call fail with EPERM before any packet leaves. */

static __always_inline u8 ow_proto(u32 protocol)
{
    if (protocol == IPPROTO_MPTCP)
        return IPPROTO_TCP;
    return (u8)protocol;
}

static __always_inline int ow_sock_addr4(struct bpf_sock_addr *ctx)
{
    if (ow_is_self())
        return 1;
    struct ow_connect c = {};
    u32 ip = ctx->user_ip4;
    __builtin_memcpy(c.daddr, &ip, 4);
    c.family = AF_INET;
    c.dport = bpf_ntohs((u16)ctx->user_port);
    c.protocol = ow_proto(ctx->protocol);
    c.sock_type = ctx->type;
    return ow_report_connect(&c, OW_PROBE_CGROUP);
}

static __always_inline int ow_sock_addr6(struct bpf_sock_addr *ctx)
{
    if (ow_is_self())
        return 1;
    struct ow_connect c = {};
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    __builtin_memcpy(c.daddr, &w0, 4);
    __builtin_memcpy(c.daddr + 4, &w1, 4);
    __builtin_memcpy(c.daddr + 8, &w2, 4);
    __builtin_memcpy(c.daddr + 12, &w3, 4);
    c.family = AF_INET6;
    c.dport = bpf_ntohs((u16)ctx->user_port);
    c.protocol = ow_proto(ctx->protocol);
    c.sock_type = ctx->type;
    return ow_report_connect(&c, OW_PROBE_CGROUP);
}

int ow_connect4(struct bpf_sock_addr *ctx)
{
    return ow_sock_addr4(ctx);
}

int ow_connect6(struct bpf_sock_addr *ctx)
{
    return ow_sock_addr6(ctx);
}

int ow_sendmsg4(struct bpf_sock_addr *ctx)
{
    return ow_sock_addr4(ctx);
}

int ow_sendmsg6(struct bpf_sock_addr *ctx)
{
    return ow_sock_addr6(ctx);
}
