/* The fork leak on ::1 only (IPV6_V6ONLY): the parent keeps its copy of every accepted socket;
 * the child serves, reads to EOF and only close()s. No FIN: CLOSE-WAIT, held by the parent. A
 * client dialling 127.0.0.1 is refused: it must dial [::1].
 * Build: cc -O2 -o fork_leak_v6 fork_leak_v6.c    Run: ./fork_leak_v6 PORT */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

int main(int argc, char **argv) {
    const char *port = argc > 1 ? argv[1] : getenv("PORT");
    if (!port) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    int srv = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(srv, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(port)),
                             .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (bind(srv, (struct sockaddr *)&a, sizeof a) || listen(srv, 1024)) {
        perror("listen");
        return 1;
    }
    for (;;) {
        int c = accept(srv, NULL, NULL);
        if (c < 0)
            continue;
        if (fork() == 0) {
            char buf[4096];
            close(srv);
            if (read(c, buf, sizeof buf) > 0)
                write(c, reply, sizeof reply - 1);
            while (read(c, buf, sizeof buf) > 0)
                ;
            close(c);
            _exit(0);
        }
        /* the bug: no close(c) */
    }
}
