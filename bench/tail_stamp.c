/* tail_stamp: when did each line of a growing file appear? (for the latency figure)
 *
 *   tail_stamp FILE OUT
 *
 * Watches FILE with inotify and reads what was appended as soon as the writer's write() returns;
 * every complete line gets the CLOCK_REALTIME ns of the read that brought its newline. Lines are
 * numbered from the start of FILE (which must exist). On SIGINT/SIGTERM, reads what is left (stop
 * it after the writer is done), writes the arrival times (int64 per line, in order) to OUT, exits 0.
 * Reading costs one wakeup per write of the tracer's sink (it writes batches of lines with writev),
 * not one per line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINES (1L << 25)

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "tail_stamp: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: tail_stamp FILE OUT\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(argv[1]);
    int in = inotify_init1(IN_CLOEXEC);
    if (in < 0 || inotify_add_watch(in, argv[1], IN_MODIFY) < 0)
        die("inotify");
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    size_t cap = 1 << 16;
    long lines = 0;
    int64_t *at = malloc(cap * sizeof(*at));
    if (!at)
        die("malloc");
    static char buf[1 << 20];
    static char ev[4096];
    for (;;) {
        int last = stop; /* after a stop, one more pass stamps what was written meanwhile */
        ssize_t n;
        while ((n = read(fd, buf, sizeof(buf))) > 0) {
            int64_t t = wall_ns();
            for (char *p = buf; (p = memchr(p, '\n', buf + n - p)) != NULL; p++) {
                if (lines == MAX_LINES)
                    break;
                if ((size_t)lines == cap) {
                    cap *= 2;
                    at = realloc(at, cap * sizeof(*at));
                    if (!at)
                        die("realloc");
                }
                at[lines++] = t;
            }
        }
        if (n < 0 && errno != EINTR)
            die("read");
        if (last)
            break;
        /* wait for the next write; the timeout bounds the wait when a stop signal lands just before it */
        struct pollfd pfd = {.fd = in, .events = POLLIN};
        if (poll(&pfd, 1, 100) > 0 && read(in, ev, sizeof(ev)) < 0 && errno != EINTR)
            die("inotify read");
    }
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(at, sizeof(*at), lines, f) != (size_t)lines || fclose(f) != 0)
        die(argv[2]);
    return 0;
}
