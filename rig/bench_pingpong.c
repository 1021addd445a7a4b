/* The floor for a trapped MMIO round trip: two processes on this machine exchanging messages
 * the size of a vfio-user REGION_READ (request: 16-byte header + 16-byte region_rw; reply:
 * the same plus 4 data bytes) over an AF_UNIX stream socketpair, one blocking read() and one
 * write() per side per message, as the device model does.
 *
 *   bench_pingpong [ROUND_TRIPS]   prints "<round trips> <total ns>"
 *
 * `rig bench` compiles this with the system cc at run time (rig/bench.py).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REQUEST 32
#define REPLY 36

static int full(int fd, char *buf, size_t n, int writing) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = writing ? write(fd, buf + done, n - done) : read(fd, buf + done, n - done);
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 100000;
    int sv[2];
    char req[REQUEST], rep[REPLY];
    if (rounds <= 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) { /* the "device": answer every request */
        close(sv[0]);
        memset(rep, 0x5a, sizeof rep);
        while (full(sv[1], req, REQUEST, 0) == 0)
            if (full(sv[1], rep, REPLY, 1) != 0)
                break;
        _exit(0);
    }
    close(sv[1]);
    memset(req, 0xa5, sizeof req);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++) {
        if (full(sv[0], req, REQUEST, 1) != 0 || full(sv[0], rep, REPLY, 0) != 0) {
            fprintf(stderr, "ping-pong broke off after %ld round trips\n", i);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(sv[0]);
    waitpid(pid, NULL, 0);
    long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("%ld %lld\n", rounds, ns);
    return 0;
}
