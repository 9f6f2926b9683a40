/* storm_child: connect once to 127.0.0.1:PORT and exit (built static, so exec is quick).
 *
 *   storm_child PORT
 *
 * Exit status 0 when the connect succeeded, 1 otherwise. Closes with SO_LINGER 0 (an RST, no
 * TIME_WAIT), so thousands of children do not use up ephemeral ports.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1])),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 1;
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    int ok = connect(fd, (struct sockaddr *)&dst, sizeof(dst)) == 0;
    close(fd);
    return ok ? 0 : 1;
}
