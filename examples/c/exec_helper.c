/* A helper inherits the connection in C: accept() without SOCK_CLOEXEC, then the child
 * starts `sleep` by fork+exec, which inherits the socket. The parent closes its copy and the
 * child closes its own after EOF; the helper's copy stays: CLOSE-WAIT, held by the helper.
 * With -DCLOEXEC the connection is accepted with accept4(SOCK_CLOEXEC): the fix.
 * Build: cc -O2 -o exec_helper exec_helper.c    Run: ./exec_helper PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGCHLD, SIG_IGN);
    int srv = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(srv, (struct sockaddr *)&a, sizeof a) || listen(srv, 1024)) {
        perror("listen");
        return 1;
    }
    for (;;) {
#ifdef CLOEXEC
        int c = accept4(srv, NULL, NULL, SOCK_CLOEXEC);
#else
        int c = accept(srv, NULL, NULL);
#endif
        if (c < 0)
            continue;
        if (fork() == 0) {
            char buf[4096];
            if (fork() == 0) {
                execlp("sleep", "sleep", "3600", (char *)NULL);
                _exit(127);
            }
            if (read(c, buf, sizeof buf) > 0)
                write(c, "ok\n", 3);
            while (read(c, buf, sizeof buf) > 0)
                ;
            close(c);
            _exit(0);
        }
        close(c);
    }
}
