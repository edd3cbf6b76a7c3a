/* A clean fork server bound to one specific address, 127.0.0.2 (not 127.0.0.1, not a wildcard):
 * the parent closes its copy right after fork(); the child serves, reads to EOF and close()s.
 * Clean, for a client that dials 127.0.0.2; one dialling 127.0.0.1 is refused.
 * Build: cc -O2 -o specific_address specific_address.c    Run: ./specific_address PORT */
#include <arpa/inet.h>
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
    signal(SIGCHLD, SIG_IGN);
    int srv = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    inet_pton(AF_INET, "127.0.0.2", &a.sin_addr);
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
        close(c);
    }
}
