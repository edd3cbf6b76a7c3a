/* An inetd-style server: a child per connection puts the connection on its stdin and stdout
 * (dup2) and execs a shell handler that reads the request to its blank line and prints a reply;
 * the parent closes its copy right after fork(), and the listening socket is close-on-exec. When
 * the handler exits, its copies were the last: the server's FIN goes out. Clean.
 * Build: cc -O2 -o fork_exec_handler fork_exec_handler.c    Run: ./fork_exec_handler PORT */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* The request is read to its blank line: closing with unread bytes would send RST, not FIN. */
static const char handler[] =
    "cr=$(printf '\\r'); while read -r line; do [ \"$line\" = \"$cr\" ] && break;"
    " [ -z \"$line\" ] && break; done;"
    " printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n'";

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
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port)),
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
            signal(SIGCHLD, SIG_DFL);
            dup2(c, 0);
            dup2(c, 1);
            close(c);
            execl("/bin/sh", "sh", "-c", handler, (char *)NULL);
            _exit(127);
        }
        close(c);
    }
}
