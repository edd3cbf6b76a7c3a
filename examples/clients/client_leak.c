/* A client that opens a connection per request and keeps it: it reads the response and never
 * reads again, nor closes. Each connection the server closes waits in CLOSE-WAIT in this
 * process: one more per request, a leak.
 * Build: cc -O2 -o client_leak client_leak.c    Run: ./client_leak HOST PORT */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* One request on a new connection; returns it, open. */
static int request(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("connect");
        exit(1);
    }
    const char *req = "GET / HTTP/1.1\r\nHost: lab\r\n\r\n";
    if (write(fd, req, strlen(req)) < 0) {
        perror("write");
        exit(1);
    }
    char buf[4096];
    if (read(fd, buf, sizeof buf) <= 0) {
        perror("read");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[2]);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 5; i++) {
            int fd = request(argv[1], port);
#ifdef CLOSES
            close(fd);
#else
            (void)fd; /* kept: the leak */
#endif
        }
        pause_ms(600);
    }
    pause_ms(1500);
    return 0;
}
