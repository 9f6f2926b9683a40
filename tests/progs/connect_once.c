/* Test workload: connect (TCP) or send (UDP) once to HOST PORT and exit, fast.
 * Options change how it behaves so tests can check attribution:
 *   --udp            sendto() a datagram instead of a TCP connect
 *   --udp-connect    connect() a UDP socket, then send()
 *   --count N        repeat the send N times (UDP)
 *   --delete-self    unlink our own executable before connecting
 *   --rename NAME    prctl(PR_SET_NAME) before connecting
 *   --daemon         double-fork; the grandchild connects and prints its pid and its parent's
 *   --linger MS      stay alive MS milliseconds after connecting
 * HOST and PORT are the last two arguments: anything before them is ignored (hostile-argv tests).
 * Prints "pid=<pid> ppid=<parent at connect>" on stdout before connecting. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int udp = 0, udp_connect = 0, delete_self = 0, daemonize = 0, linger_ms = 0, count = 1;
    const char *rename_to = NULL;
    const char *host = NULL, *port = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--udp")) udp = 1;
        else if (!strcmp(argv[i], "--udp-connect")) udp = udp_connect = 1;
        else if (!strcmp(argv[i], "--delete-self")) delete_self = 1;
        else if (!strcmp(argv[i], "--daemon")) daemonize = 1;
        else if (!strcmp(argv[i], "--rename") && i + 1 < argc) rename_to = argv[++i];
        else if (!strcmp(argv[i], "--linger") && i + 1 < argc) linger_ms = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atoi(argv[++i]);
        else {
            host = port;
            port = argv[i];
        }
    }
    if (!host || !port) {
        fprintf(stderr, "usage: connect_once [options] HOST PORT\n");
        return 2;
    }
    if (daemonize) {
        pid_t middle = fork();
        if (middle > 0) {
            waitpid(middle, NULL, 0);
            usleep(200000);
            return 0;
        }
        if (fork() > 0)
            _exit(0);
        usleep(20000); /* let the middle process exit: we are reparented */
    }
    if (delete_self) {
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n > 0) {
            self[n] = 0;
            unlink(self);
        }
    }
    if (rename_to)
        prctl(PR_SET_NAME, rename_to, 0, 0, 0);

    struct sockaddr_storage ss = {0};
    socklen_t len;
    int family;
    if (strchr(host, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = family = AF_INET6;
        a->sin6_port = htons(atoi(port));
        inet_pton(AF_INET6, host, &a->sin6_addr);
        len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = family = AF_INET;
        a->sin_port = htons(atoi(port));
        inet_pton(AF_INET, host, &a->sin_addr);
        len = sizeof(*a);
    }
    printf("pid=%d ppid=%d\n", getpid(), getppid());
    fflush(stdout);
    int fd = socket(family, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    int rc = 0;
    if (udp_connect) {
        rc = connect(fd, (struct sockaddr *)&ss, len);
        for (int i = 0; i < count && rc == 0; i++)
            send(fd, "x", 1, 0);
    } else if (udp) {
        for (int i = 0; i < count; i++)
            if (sendto(fd, "x", 1, 0, (struct sockaddr *)&ss, len) < 0)
                rc = -1;
    } else {
        rc = connect(fd, (struct sockaddr *)&ss, len);
    }
    if (linger_ms)
        usleep(linger_ms * 1000);
    close(fd);
    return rc == 0 ? 0 : 1;
}
