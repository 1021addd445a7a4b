/* The floor for a trapped MMIO round trip: two processes on this machine exchanging messages
 * the size of a vfio-user REGION_READ (request: 16-byte header + 16-byte region_rw; reply:
 * the same plus 4 data bytes) over an AF_UNIX stream socketpair, one blocking read() and one
 * write() per side per message, as the device model does.
 *
 *   bench_pingpong [ROUND_TRIPS]   prints "<round trips> <total ns>"
 *
 * With --vfio-user it is instead the client half against a real vfio-user server, sending
 * what QEMU sends for a trapped 32-bit read: the device model's own cost, without a Python
 * client's on top.
 *
 *   bench_pingpong --vfio-user SOCKET REGION OFFSET [ROUND_TRIPS]
 *
 * `rig bench` compiles this with the system cc at run time (rig/bench.py).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
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

struct vfio_user_header { /* little-endian on x86, as the protocol wants */
    uint16_t msg_id, command;
    uint32_t size, flags, error;
};
struct region_rw {
    uint64_t offset;
    uint32_t region, count;
};
#define VFIO_USER_VERSION 1
#define VFIO_USER_REGION_READ 9
#define VFIO_USER_REPLY 0x1
#define VFIO_USER_ERROR 0x20

static double elapsed_ns(const struct timespec *t0, const struct timespec *t1) {
    return (double)(t1->tv_sec - t0->tv_sec) * 1e9 + (double)(t1->tv_nsec - t0->tv_nsec);
}

static int vfio_user_client(const char *path, uint32_t region, uint64_t offset, long rounds) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "bad socket path %s\n", path);
        return 2;
    }
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror(path);
        return 2;
    }
    /* VERSION first, as QEMU does: 0.0 with an empty capabilities object. */
    struct {
        struct vfio_user_header h;
        uint16_t major, minor;
        char caps[3];
    } __attribute__((packed)) ver = {{0, VFIO_USER_VERSION, sizeof ver, 0, 0}, 0, 0, "{}"};
    char buf[256];
    struct vfio_user_header *h = (struct vfio_user_header *)buf;
    if (full(fd, (char *)&ver, sizeof ver, 1) != 0 || full(fd, buf, sizeof *h, 0) != 0 ||
        h->size > sizeof buf || full(fd, buf + sizeof *h, h->size - sizeof *h, 0) != 0 ||
        (h->flags & VFIO_USER_ERROR)) {
        fprintf(stderr, "VERSION handshake failed\n");
        return 1;
    }
    struct {
        struct vfio_user_header h;
        struct region_rw rw;
    } __attribute__((packed)) req = {{0, VFIO_USER_REGION_READ, sizeof req, 0, 0},
                                     {offset, region, 4}};
    size_t reply_size = sizeof req + 4;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++) {
        req.h.msg_id = (uint16_t)(i + 1);
        if (full(fd, (char *)&req, sizeof req, 1) != 0 || full(fd, buf, reply_size, 0) != 0) {
            fprintf(stderr, "the server stopped answering after %ld reads\n", i);
            return 1;
        }
        if (h->msg_id != req.h.msg_id || h->flags != VFIO_USER_REPLY || h->size != reply_size) {
            fprintf(stderr, "bad reply to read %ld: id %u flags %#x size %u error %u\n", i,
                    h->msg_id, h->flags, h->size, h->error);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(fd);
    printf("%ld %.0f\n", rounds, elapsed_ns(&t0, &t1));
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--vfio-user") == 0) {
        if (argc < 5) {
            fprintf(stderr, "usage: %s --vfio-user SOCKET REGION OFFSET [ROUND_TRIPS]\n", argv[0]);
            return 2;
        }
        long n = argc > 5 ? atol(argv[5]) : 10000;
        return vfio_user_client(argv[2], (uint32_t)strtoul(argv[3], NULL, 0),
                                strtoull(argv[4], NULL, 0), n > 0 ? n : 10000);
    }
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
    printf("%ld %.0f\n", rounds, elapsed_ns(&t0, &t1));
    return 0;
}
