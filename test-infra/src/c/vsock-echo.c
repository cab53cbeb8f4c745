/* The Linux tier's vsock helper, built static by the harness (static_c).
 *   vsock-echo cid                   print this guest's CID
 *   vsock-echo connect CID PORT MSG  send MSG over AF_VSOCK, print the reply
 *   vsock-echo serve PATH            echo one connection on a Unix socket
 * Every failure prints one line naming the call and exits 1. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int die(const char *what) {
    printf("error:%s:%s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    char buf[4096];
    if (argc == 2 && !strcmp(argv[1], "cid")) {
        unsigned int cid = 0;
        int fd = open("/dev/vsock", O_RDONLY);
        if (fd < 0 || ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0)
            return die("cid");
        printf("%u\n", cid);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "connect")) {
        struct sockaddr_vm addr = {0};
        addr.svm_family = AF_VSOCK;
        addr.svm_cid = (unsigned)atoi(argv[2]);
        addr.svm_port = (unsigned)atoi(argv[3]);
        int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (fd < 0) return die("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return die("connect");
        size_t len = strlen(argv[4]);
        if (write(fd, argv[4], len) != (ssize_t)len) return die("write");
        size_t got = 0;
        while (got < len) {
            ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
            if (n <= 0) return die("read");
            got += (size_t)n;
        }
        buf[got] = 0;
        printf("%s\n", buf);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "serve")) {
        struct sockaddr_un addr = {0};
        addr.sun_family = AF_UNIX;
        strncpy(addr.sun_path, argv[2], sizeof addr.sun_path - 1);
        unlink(argv[2]);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) return die("socket");
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return die("bind");
        if (listen(fd, 1) < 0) return die("listen");
        int c = accept(fd, NULL, NULL);
        if (c < 0) return die("accept");
        for (;;) {
            ssize_t n = read(c, buf, sizeof buf);
            if (n <= 0) break;
            if (write(c, buf, (size_t)n) != n) return die("write");
        }
        return 0;
    }
    fprintf(stderr, "usage: vsock-echo cid | connect CID PORT MSG | serve PATH\n");
    return 2;
}
