/* outwatch: the maps every program shares. Included once, after outwatch.h. */
#ifndef OUTWATCH_MAPS_H
#define OUTWATCH_MAPS_H

/* The one ring buffer every record goes through, in the order the kernel produced them: a fork's
 * child is known (forks map) and an exec record is queued before that process's connects. */
BPF_RINGBUF_OUTPUT(events, OW_RINGBUF_PAGES);

/* Ring buffer reservations that failed, per CPU, indexed by enum ow_type: losses are counted. */
BPF_PERCPU_ARRAY(lost, u64, OW_EV_TYPES);

/* Settings from userspace (index 0): outwatch's own pid, loopback filter. */
BPF_ARRAY(config, struct ow_settings, 1);

/* pid (or tid) -> parent tgid and fork time (sched_process_fork), last exec time
 * (sched_process_exec) and whether an execve is under way (its syscall entry to exit). Kept after exit (LRU evicts) so that the parent of a double-forked daemon is
 * still known when the middle process is gone. Thread creations land here too; their keys are tids
 * that never act as a tgid. */
BPF_TABLE("lru_hash", u32, struct ow_fork, forks, 131072);

/* tid -> argv captured at sys_enter_execve, completed and sent at sched_process_exec. */
BPF_TABLE("lru_hash", u32, struct ow_exec, exec_args, 1024);

/* Per-CPU scratch for building an exec record (too big for the 512-byte BPF stack). */
BPF_PERCPU_ARRAY(exec_scratch, struct ow_exec, 1);

/* A TCP connect between the hook (cgroup connect4/6 or kprobe) and SYN_SENT, by thread: a thread
 * has one connect() in progress at a time. Plain hash (not LRU): when full, the connect is sent at
 * once without its outcome rather than evicted. */
BPF_HASH(tcp_by_tid, u32, struct ow_connect, 16384);

/* A TCP connect in SYN_SENT, by socket address (the source port is not chosen yet when SYN_SENT is
 * entered, so the 4-tuple cannot be the key), until ESTABLISHED or CLOSE sends it with its outcome.
 * Userspace sends (and removes) entries older than a second as "outcome unknown". */
BPF_HASH(tcp_by_sk, u64, struct ow_connect, 65536);

/* Connects that just closed while in SYN_SENT, by (daddr, sport, dport): the error report that
 * follows the close (Linux >= 6.10 reports after tcp_done) carries no socket address. */
BPF_TABLE("lru_hash", struct ow_flow_key, u8, closed_connects, 4096);

/* UDP flows whose repeats are being counted: (pid, destination, verdict) -> window and repeats. */
BPF_TABLE("lru_hash", struct ow_udp_key, struct ow_udp_val, udp_flows, 16384);

/* Blocked destinations (outwatch block --via bpf): longest-prefix match on the address. */
BPF_LPM_TRIE(deny4, struct ow_deny4_key, struct ow_deny_val, 4096);
BPF_LPM_TRIE(deny6, struct ow_deny6_key, struct ow_deny_val, 4096);

static __always_inline void ow_count_lost(u32 type)
{
    u64 *c = lost.lookup(&type);
    if (c)
        (*c)++;
}

static __always_inline struct ow_settings *ow_settings(void)
{
    u32 zero = 0;
    return config.lookup(&zero);
}

static __always_inline void ow_fill_header_at(struct ow_header *h, u32 type, u64 ts_ns)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();

    h->ts_ns = ts_ns;
    h->type = type;
    h->pid = pid_tgid >> 32;
    h->tid = (u32)pid_tgid;
    h->uid = (u32)uid_gid;
    h->gid = uid_gid >> 32;
    h->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
    struct ow_fork *f = forks.lookup(&h->pid);
    if (f) {
        h->ppid = f->ppid;
        h->start_ns = f->start_ns;
        h->exec_ns = f->exec_ns;
    } else {
        h->ppid = 0;
        h->start_ns = 0;
        h->exec_ns = 0;
    }
}

static __always_inline void ow_fill_header(struct ow_header *h, u32 type)
{
    ow_fill_header_at(h, type, bpf_ktime_get_boot_ns());
}

static __always_inline void ow_emit_connect(struct ow_connect *c)
{
    if (events.ringbuf_output(c, sizeof(*c), 0))
        ow_count_lost(OW_EV_CONNECT);
}

static __always_inline int ow_is_self(void)
{
    struct ow_settings *s = ow_settings();
    return s && (bpf_get_current_pid_tgid() >> 32) == s->self_pid;
}

/* 127.0.0.0/8 for AF_INET (address in the first 4 bytes), ::1 for AF_INET6. */
static __always_inline int ow_is_loopback(u16 family, const u8 *a)
{
    if (family == AF_INET)
        return a[0] == 127;
    u32 w0, w1, w2, w3;
    __builtin_memcpy(&w0, a, 4);
    __builtin_memcpy(&w1, a + 4, 4);
    __builtin_memcpy(&w2, a + 8, 4);
    __builtin_memcpy(&w3, a + 12, 4);
    return (w0 | w1 | w2) == 0 && w3 == bpf_htonl(1);
}

static __always_inline int ow_skip_loopback(u16 family, const u8 *a)
{
    struct ow_settings *s = ow_settings();
    return !(s && s->include_loopback) && ow_is_loopback(family, a);
}

#endif
