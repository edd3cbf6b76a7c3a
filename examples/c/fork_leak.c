/* The fork leak in C: the parent keeps its copy of every accepted socket; the child
 * serves, reads to EOF and only close()s. No FIN: CLOSE-WAIT, held by the parent.
 * With -DPARENT_CLOSES the parent closes its copy right after fork(): the real fix.
 * Build: cc -O2 -o fork_leak fork_leak.c    Run: ./fork_leak PORT */
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
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
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
                write(c, "ok\n", 3);
            while (read(c, buf, sizeof buf) > 0)
                ;
            close(c);
            _exit(0);
        }
#ifdef PARENT_CLOSES
        close(c); /* the fix */
#endif
    }
}
