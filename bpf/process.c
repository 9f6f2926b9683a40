/* outwatch: process lineage captured in the kernel: fork (parent), exec (filename, argv), exit.
 * What dies with a 2 ms process is recorded here, before /proc can be read. */

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    struct ow_fork f = {};
    u32 child = args->child_pid;
    u32 parent = bpf_get_current_pid_tgid() >> 32;

    f.ppid = parent;
    f.start_ns = bpf_ktime_get_boot_ns();
    struct ow_fork *pf = forks.lookup(&parent);
    if (pf)
        f.exec_ns = pf->exec_ns; /* a forked child runs its parent's image until it execs */
    forks.update(&child, &f);
    return 0;
}

/* argv is user memory of the old image: it must be read at syscall entry, before the exec. */
static __always_inline int ow_capture_argv(const char *const *argv)
{
    u32 zero = 0;
    struct ow_exec *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;

    u32 off = 0;
    u32 argc = 0;
    u32 flags = 0;
    for (int i = 0; i < OW_MAX_ARGS; i++) {
        const char *p = NULL;
        if (bpf_probe_read_user(&p, sizeof(p), &argv[i]) || !p)
            goto done;
        if (off > OW_ARGS_BUF - OW_ARG_MAX) {
            flags |= OW_EXEC_ARGS_TRUNCATED;
            goto done;
        }
        long n = bpf_probe_read_user_str(&e->args[off], OW_ARG_MAX, p);
        if (n <= 0)
            goto done;
        if (n == OW_ARG_MAX)
            flags |= OW_EXEC_ARGS_TRUNCATED;
        off += n;
        argc++;
    }
    {
        const char *more = NULL;
        if (!bpf_probe_read_user(&more, sizeof(more), &argv[OW_MAX_ARGS]) && more)
            flags |= OW_EXEC_ARGS_TRUNCATED;
    }
done:
    e->argc = argc;
    e->args_len = off;
    e->flags = flags;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_args.update(&tid, e);
    return 0;
}

/* An exec switches /proc/PID/exe before sched_process_exec runs: while exec_busy is set, userspace
 * cannot tell which image /proc describes, so it does not read it. */
static __always_inline void ow_exec_busy(u32 busy)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct ow_fork *f = forks.lookup(&pid);
    if (f)
        f->exec_busy = busy;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    ow_exec_busy(1);
    return ow_capture_argv(args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    ow_exec_busy(1);
    return ow_capture_argv(args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    ow_exec_busy(0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    ow_exec_busy(0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 old = args->old_pid;
    struct ow_exec *e = exec_args.lookup(&old);
    if (!e) {
        u32 zero = 0;
        e = exec_scratch.lookup(&zero);
        if (!e)
            return 0;
        e->argc = 0;
        e->args_len = 0;
        e->flags = OW_EXEC_NO_ARGV;
    }
    /* the new image's time, in the fork map first: connects after this exec carry it */
    u64 now = bpf_ktime_get_boot_ns();
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct ow_fork *f = forks.lookup(&pid);
    if (f) {
        f->exec_ns = now;
    } else {
        struct ow_fork nf = {.exec_ns = now};
        forks.update(&pid, &nf);
    }
    ow_fill_header_at(&e->h, OW_EV_EXEC, now);
    e->old_pid = old;
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (char *)args + loc);

    u32 len = e->args_len;
    if (len > OW_ARGS_BUF)
        len = OW_ARGS_BUF;
    len += offsetof(struct ow_exec, args);
    if (events.ringbuf_output(e, len, 0))
        ow_count_lost(OW_EV_EXEC);
    exec_args.delete(&old);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_args.delete(&tid);
    struct ow_connect *c = tcp_by_tid.lookup(&tid); /* a connect that never reached SYN_SENT */
    if (c) {
        ow_emit_connect(c);
        tcp_by_tid.delete(&tid);
    }
    if (!args->group_dead)
        return 0;
    struct ow_exit *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        ow_count_lost(OW_EV_EXIT);
        return 0;
    }
    ow_fill_header(&e->h, OW_EV_EXIT);
    events.ringbuf_submit(e, 0);
    return 0;
}
