/* outwatch: records shared by every BPF program and by the Python decoder (kernel/records.py).
 *
 * Stable ABI only: UAPI structs, tracepoint fields (BCC builds `args` from tracefs formats) and helper
 * calls. No field of struct sock or struct task_struct is read: the headers BCC compiles against may
 * not match the running kernel (see shared/KERNEL.md).
 *
 * Any change to a struct here must be mirrored in src/outwatch/kernel/records.py.
 */
#ifndef OUTWATCH_H
#define OUTWATCH_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>

#define OW_COMM_LEN 16
#define OW_PATH_LEN 256          /* exec filename as the kernel resolved it (bprm->filename) */
#define OW_ARGS_BUF 8192         /* packed argv, NUL separated; a power of two */
#define OW_ARG_MAX 2048          /* one argument is cut at this many bytes */
#define OW_MAX_ARGS 64           /* arguments read per exec (bounded loop) */
#define OW_UDP_WINDOW_NS 1000000000ULL /* repeated UDP sends within this window are counted, not sent */

enum ow_type {
    OW_EV_CONNECT = 1,   /* an outbound connect() (with its outcome) or UDP sendto/sendmsg */
    OW_EV_EXEC = 2,      /* a successful execve/execveat, with argv captured at syscall entry */
    OW_EV_EXIT = 3,      /* a whole process exited (group_dead) */
    OW_EV_TCPERROR = 4,  /* the error that ended a failed TCP connect (e.g. ECONNREFUSED) */
    OW_EV_TYPES = 5,
};

/* Flags of an exec record. */
#define OW_EXEC_ARGS_TRUNCATED 1 /* an argument was cut, or more than OW_MAX_ARGS were passed */
#define OW_EXEC_NO_ARGV 2        /* no sys_enter_execve was seen for this exec (argv unknown) */

/* Verdicts of a connect record. */
#define OW_ALLOWED 0
#define OW_DENIED 1              /* the destination is in the deny map: the call failed with EPERM */

/* How a connect ended. A TCP connect is held in the kernel (tcp_by_tid, then tcp_by_sk) and sent once
 * it is established or closed; UDP sends and denied connects are sent at once. */
#define OW_OUTCOME_UNKNOWN 0
#define OW_OUTCOME_SUCCESS 1
#define OW_OUTCOME_FAILURE 2

/* Probe that produced a connect record. */
#define OW_PROBE_CGROUP 0
#define OW_PROBE_KPROBE 1

struct ow_header {
    __u64 ts_ns;        /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME, the clock of /proc/PID/stat starttime */
    __u32 type;         /* enum ow_type */
    __u32 pid;          /* tgid */
    __u32 tid;
    __u32 ppid;         /* parent tgid from the fork map, 0 when the fork was not seen */
    __u64 start_ns;     /* fork time (CLOCK_BOOTTIME) from the fork map, 0 when not seen */
    __u64 exec_ns;      /* time of the process's last exec seen (its image), 0 when none was seen */
    __u64 cgroup_id;
    __u32 uid;
    __u32 gid;
    char comm[OW_COMM_LEN];
};

struct ow_connect {
    struct ow_header h; /* taken when connect()/sendto() was called, in the calling thread */
    __u8 daddr[16];     /* network order; IPv4 in the first 4 bytes */
    __u8 saddr[16];     /* source address, once the TCP outcome is known */
    __u16 dport;        /* host order */
    __u16 sport;        /* host order, once the TCP outcome is known */
    __u16 family;       /* AF_INET / AF_INET6 (an IPv4-mapped IPv6 destination is AF_INET) */
    __u8 protocol;      /* IPPROTO_TCP / IPPROTO_UDP */
    __u8 sock_type;     /* SOCK_STREAM / SOCK_DGRAM */
    __u8 verdict;       /* OW_ALLOWED / OW_DENIED */
    __u8 probe;         /* OW_PROBE_* */
    __u8 outcome;       /* OW_OUTCOME_* */
    __u8 pad;
    __u32 count;        /* sends this record stands for (UDP repeats), 1 for a connect */
};

struct ow_exec {
    struct ow_header h;
    __u32 old_pid;      /* tid that called execve (differs from pid when a thread execs) */
    __u32 argc;         /* arguments captured */
    __u32 args_len;     /* bytes used in args */
    __u32 flags;        /* OW_EXEC_* */
    char filename[OW_PATH_LEN];
    char args[OW_ARGS_BUF];
};

struct ow_exit {
    struct ow_header h;
};

struct ow_tcperror {
    struct ow_header h; /* softirq context: pid and comm are not the connecting process's */
    __u8 saddr[16];
    __u8 daddr[16];
    __u16 sport;        /* host order */
    __u16 dport;        /* host order */
    __u16 family;
    __u16 pad;
    __s32 error;        /* positive errno */
    __u32 pad2;
};

/* What the kernel knows of a process: the key is its pid (tid for threads). */
struct ow_fork {
    __u32 ppid;         /* parent tgid, 0 when the fork was not seen */
    __u32 exec_busy;    /* 1 from execve's entry to its return: /proc may already show the next image */
    __u64 start_ns;     /* fork time, 0 when the fork was not seen */
    __u64 exec_ns;      /* time of its last exec, 0 when none was seen */
};

/* Key of TCP error correlation. */
struct ow_flow_key {
    __u8 daddr[16];
    __u16 sport;
    __u16 dport;
    __u16 family;
    __u16 pad;
};

/* A UDP flow whose repeats are being counted (see OW_UDP_WINDOW_NS). */
struct ow_udp_key {
    __u32 pid;
    __u16 family;
    __u16 dport;
    __u8 daddr[16];
    __u8 verdict;
    __u8 pad[7];
};

struct ow_udp_val {
    __u64 window_start_ns; /* when the last record for this flow was sent */
    __u64 repeats;         /* sends since then, not yet reported */
};

/* Settings written by userspace before attaching (index 0 of ow_config). */
struct ow_settings {
    __u32 self_pid;          /* outwatch's own tgid: its traffic is never reported */
    __u32 include_loopback;  /* 0: drop 127.0.0.0/8 and ::1 in the kernel */
};

/* One entry of the deny map (bpf blocks): all ports, or up to 8 (port, protocol) pairs. */
#define OW_DENY_RULES 8
struct ow_deny_rule {
    __u16 port;      /* 0 = any port */
    __u8 protocol;   /* 0 = any protocol */
    __u8 pad;
};
struct ow_deny_val {
    __u8 all;        /* 1: every port and protocol */
    __u8 n;          /* rules used */
    __u8 pad[2];
    struct ow_deny_rule rules[OW_DENY_RULES];
};
struct ow_deny4_key {
    __u32 prefixlen;
    __u8 addr[4];
};
struct ow_deny6_key {
    __u32 prefixlen;
    __u8 addr[16];
};

#endif
