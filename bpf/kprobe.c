/* outwatch probe set "kprobe", for hosts without a usable cgroup v2: the same records from kprobes on
 * the connect and UDP send paths. Cannot deny. The destination comes from the sockaddr the kernel
 * already copied in (UAPI structs only). For UDP, msg->msg_name is the first member of struct msghdr
 * in every kernel since 2.6: the one layout assumption made here, and the reason it is read as a bare
 * pointer rather than through the (possibly mismatched) struct definition. */

static __always_inline int ow_kp_sockaddr(const void *uaddr, u8 protocol, u8 sock_type)
{
    if (!uaddr || ow_is_self())
        return 0;
    struct ow_connect c = {};
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), uaddr);
    if (family == AF_INET) {
        struct sockaddr_in sa = {};
        bpf_probe_read_kernel(&sa, sizeof(sa), uaddr);
        __builtin_memcpy(c.daddr, &sa.sin_addr.s_addr, 4);
        c.dport = bpf_ntohs(sa.sin_port);
    } else if (family == AF_INET6) {
        struct sockaddr_in6 sa = {};
        bpf_probe_read_kernel(&sa, sizeof(sa), uaddr);
        __builtin_memcpy(c.daddr, &sa.sin6_addr, 16);
        c.dport = bpf_ntohs(sa.sin6_port);
    } else {
        return 0;
    }
    c.family = family;
    c.protocol = protocol;
    c.sock_type = sock_type;
    ow_report_connect(&c, OW_PROBE_KPROBE);
    return 0;
}

int ow_kp_tcp_v4_connect(struct pt_regs *ctx, void *sk, void *uaddr)
{
    return ow_kp_sockaddr(uaddr, IPPROTO_TCP, 1 /* SOCK_STREAM */);
}

int ow_kp_tcp_v6_connect(struct pt_regs *ctx, void *sk, void *uaddr)
{
    return ow_kp_sockaddr(uaddr, IPPROTO_TCP, 1 /* SOCK_STREAM */);
}

static __always_inline int ow_kp_udp(void *msg)
{
    void *name = NULL;
    bpf_probe_read_kernel(&name, sizeof(name), msg);
    return ow_kp_sockaddr(name, IPPROTO_UDP, 2 /* SOCK_DGRAM */);
}

int ow_kp_udp_sendmsg(struct pt_regs *ctx, void *sk, void *msg)
{
    return ow_kp_udp(msg);
}

int ow_kp_udpv6_sendmsg(struct pt_regs *ctx, void *sk, void *msg)
{
    return ow_kp_udp(msg);
}
