/* storm: N short-lived processes that each exec, connect once and exit.
 *
 *   storm CHILD [-n N] [-j INFLIGHT] [-o REPORT]
 *
 * Runs a loopback TCP listener (an acceptor thread on 127.0.0.1, ephemeral port), then spawns
 * CHILD (storm_child) N times with posix_spawn, at most INFLIGHT at once, passing it the port.
 * REPORT gets one line per child: "pid ppid exe spawn_ns reap_ns status" (CLOCK_REALTIME ns; the
 * child's life is at most reap - spawn), so a benchmark can check each child's attribution exactly.
 * Prints one JSON summary line on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN 100000
#define MAX_INFLIGHT 64

extern char **environ;

struct child {
    pid_t pid;
    int status;
    int64_t spawn_ns;
    int64_t reap_ns;
};

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "storm: %s: %s\n", what, strerror(errno));
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

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: storm CHILD [-n N] [-j INFLIGHT] [-o REPORT]\n");
        return 2;
    }
    char exe[PATH_MAX];
    if (!realpath(argv[1], exe))
        die(argv[1]);
    long n = 2000;
    int inflight_max = 1;
    const char *out = NULL;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "n:j:o:")) != -1) {
        switch (opt) {
        case 'n': n = atol(optarg); break;
        case 'j': inflight_max = atoi(optarg); break;
        case 'o': out = optarg; break;
        default: return 2;
        }
    }
    if (n <= 0 || n > MAX_CHILDREN || inflight_max <= 0 || inflight_max > MAX_INFLIGHT) {
        fprintf(stderr, "storm: N must be 1..%d and INFLIGHT 1..%d\n", MAX_CHILDREN, MAX_INFLIGHT);
        return 2;
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(addr);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, alen) < 0 || listen(lfd, 4096) < 0
        || getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
        die("listener");
    pthread_t th;
    if (pthread_create(&th, NULL, acceptor, &lfd) != 0)
        die("pthread_create");
    pthread_detach(th);
    char port[16];
    snprintf(port, sizeof(port), "%u", ntohs(addr.sin_port));
    char *child_argv[] = {exe, port, NULL};

    struct child *kids = calloc(n, sizeof(*kids));
    if (!kids)
        die("calloc");
    long launched = 0, reaped = 0, ok = 0;
    int running = 0;
    int64_t t0 = wall_ns();
    while (reaped < n) {
        if (launched < n && running < inflight_max) {
            struct child *k = &kids[launched];
            k->spawn_ns = wall_ns();
            int rc = posix_spawn(&k->pid, exe, NULL, NULL, child_argv, environ);
            if (rc != 0) {
                errno = rc;
                die("posix_spawn");
            }
            launched++;
            running++;
            continue;
        }
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            die("waitpid");
        }
        int64_t t = wall_ns();
        for (long i = launched - 1; i >= 0; i--) {
            if (kids[i].pid == pid && !kids[i].reap_ns) {
                kids[i].reap_ns = t;
                kids[i].status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                ok += kids[i].status == 0;
                break;
            }
        }
        reaped++;
        running--;
    }
    int64_t elapsed = wall_ns() - t0;

    int64_t *life = malloc(n * sizeof(*life));
    if (!life)
        die("malloc");
    FILE *f = out ? fopen(out, "w") : NULL;
    if (out && !f)
        die(out);
    for (long i = 0; i < n; i++) {
        life[i] = kids[i].reap_ns - kids[i].spawn_ns;
        if (f)
            fprintf(f, "%d %d %s %lld %lld %d\n", kids[i].pid, getpid(), exe, (long long)kids[i].spawn_ns,
                    (long long)kids[i].reap_ns, kids[i].status);
    }
    if (f && fclose(f) != 0)
        die(out);
    qsort(life, n, sizeof(*life), cmp_i64);
    printf("{\"pid\":%d,\"port\":%s,\"exe\":\"%s\",\"children\":%ld,\"ok\":%ld,\"inflight\":%d,\"elapsed_ns\":%lld,"
           "\"rate\":%.1f,\"life_ms_p50\":%.3f,\"life_ms_p99\":%.3f,\"life_ms_max\":%.3f}\n",
           getpid(), port, exe, n, ok, inflight_max, (long long)elapsed, n * 1e9 / elapsed,
           life[n / 2] / 1e6, life[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / 1e6, life[n - 1] / 1e6);
    free(life);
    free(kids);
    return 0;
}
