/* connect_gen: a loopback connect / sendto flood that reports exactly what it did.
 *
 *   connect_gen MODE [-d SECONDS] [-n MAX] [-r RATE] [-o FILE]
 *   MODE: tcp4 | tcp6 | udp4 | udp6
 *
 * TCP: its own listener thread on 127.0.0.1 / ::1 (ephemeral port) accepts and closes; the flood
 * loop does socket, connect, getsockname, close with SO_LINGER 0 (an RST, so no TIME_WAIT and no
 * ephemeral-port exhaustion at high rates). UDP: one socket, sendto a bound receiver that nobody
 * reads (a full receive buffer drops on the receiver's side; every sendto still succeeds).
 * Runs until SECONDS have passed or MAX attempts were made, at the highest rate it can, or paced
 * at RATE attempts per second. With -o, writes one binary record per attempt (struct attempt:
 * CLOCK_REALTIME ns just before the call, local port, success flag) for latency and matching.
 * Prints one JSON summary line on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SECONDS 120
#define MAX_ATTEMPTS 20000000L

struct attempt {
    int64_t start_ns;
    uint16_t port;
    uint8_t ok;
    uint8_t pad[5];
};

static int64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "connect_gen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *acceptor(void *arg)
{
    int lfd = *(int *)arg;
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0)
            close(c);
        else if (errno != EINTR && errno != ECONNABORTED)
            return NULL;
    }
}

/* A bound socket of this family and type on the loopback address; fills dst with its address. */
static int loopback_socket(int family, int type, struct sockaddr_storage *dst, socklen_t *len)
{
    memset(dst, 0, sizeof(*dst));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)dst;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)dst;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        *len = sizeof(*a);
    }
    int fd = socket(family, type | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    if (bind(fd, (struct sockaddr *)dst, *len) < 0)
        die("bind");
    if (getsockname(fd, (struct sockaddr *)dst, len) < 0)
        die("getsockname");
    return fd;
}

static uint16_t port_of(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)a)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
}

static int tcp_attempt(const struct sockaddr_storage *dst, socklen_t len, uint16_t *port)
{
    int fd = socket(dst->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    int ok = connect(fd, (const struct sockaddr *)dst, len) == 0;
    struct sockaddr_storage me;
    socklen_t mlen = sizeof(me);
    if (getsockname(fd, (struct sockaddr *)&me, &mlen) == 0)
        *port = port_of(&me);
    close(fd);
    return ok;
}

static void usage(void)
{
    fprintf(stderr, "usage: connect_gen tcp4|tcp6|udp4|udp6 [-d SECONDS] [-n MAX] [-r RATE] [-o FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    if (strlen(mode) != 4 || (strncmp(mode, "tcp", 3) != 0 && strncmp(mode, "udp", 3) != 0)
        || (mode[3] != '4' && mode[3] != '6'))
        usage();
    int tcp = mode[0] == 't';
    int family = mode[3] == '6' ? AF_INET6 : AF_INET;
    double seconds = 2.0, rate = 0.0;
    long max = MAX_ATTEMPTS;
    const char *out = NULL;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "d:n:r:o:")) != -1) {
        switch (opt) {
        case 'd': seconds = atof(optarg); break;
        case 'n': max = atol(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'o': out = optarg; break;
        default: usage();
        }
    }
    if (seconds <= 0 || seconds > MAX_SECONDS || max <= 0 || max > MAX_ATTEMPTS || rate < 0)
        usage();

    struct sockaddr_storage dst;
    socklen_t dlen;
    int lfd = loopback_socket(family, tcp ? SOCK_STREAM : SOCK_DGRAM, &dst, &dlen);
    int ufd = -1;
    if (tcp) {
        if (listen(lfd, 4096) < 0)
            die("listen");
        pthread_t th;
        if (pthread_create(&th, NULL, acceptor, &lfd) != 0)
            die("pthread_create");
        pthread_detach(th);
    } else {
        ufd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (ufd < 0)
            die("socket");
    }

    size_t cap = 1 << 16;
    struct attempt *log = malloc(cap * sizeof(*log));
    if (!log)
        die("malloc");
    static const char payload[32] = "outwatch-bench";
    long attempts = 0, successes = 0;
    int64_t t0 = now_ns(CLOCK_MONOTONIC);
    int64_t end = t0 + (int64_t)(seconds * 1e9);
    int64_t wall0 = now_ns(CLOCK_REALTIME);
    while (attempts < max) {
        int64_t mono = now_ns(CLOCK_MONOTONIC);
        if (mono >= end)
            break;
        if (rate > 0) {
            int64_t due = t0 + (int64_t)(attempts * (1e9 / rate));
            if (due >= end)
                break;
            if (due > mono) {
                struct timespec ts = {due / 1000000000LL, due % 1000000000LL};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
        }
        if ((size_t)attempts == cap) {
            cap *= 2;
            log = realloc(log, cap * sizeof(*log));
            if (!log)
                die("realloc");
        }
        struct attempt *a = &log[attempts];
        memset(a, 0, sizeof(*a));
        a->start_ns = now_ns(CLOCK_REALTIME);
        if (tcp)
            a->ok = tcp_attempt(&dst, dlen, &a->port);
        else
            a->ok = sendto(ufd, payload, sizeof(payload), 0, (struct sockaddr *)&dst, dlen) == sizeof(payload);
        successes += a->ok;
        attempts++;
    }
    int64_t elapsed = now_ns(CLOCK_MONOTONIC) - t0;

    if (out) {
        FILE *f = fopen(out, "wb");
        if (!f || fwrite(log, sizeof(*log), attempts, f) != (size_t)attempts || fclose(f) != 0)
            die(out);
    }
    printf("{\"mode\":\"%s\",\"pid\":%d,\"port\":%u,\"attempts\":%ld,\"successes\":%ld,"
           "\"elapsed_ns\":%lld,\"rate\":%.1f,\"start_wall_ns\":%lld}\n",
           mode, getpid(), port_of(&dst), attempts, successes, (long long)elapsed,
           elapsed > 0 ? attempts * 1e9 / elapsed : 0.0, (long long)wall0);
    free(log);
    return 0;
}
