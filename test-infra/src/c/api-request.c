/* A client of vmm's API socket for where no curl is (the nested runner's
 * busybox L1), built static by the harness (static_c).
 *   api-request SOCKET METHOD NAME   e.g. api-request api.sock PUT vm.pause
 * Sends one HTTP/1.1 request for /api/v1/NAME without a body, prints the
 * status code and the body on one line, and exits 0 for a 2xx status, 1
 * for any other, 2 when there is no answer. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int die(const char *what) {
    printf("error:%s:%s\n", what, strerror(errno));
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: api-request SOCKET METHOD NAME\n");
        return 2;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return die("socket path");
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        return die("connect");
    char request[512];
    int len = snprintf(request, sizeof request,
                       "%s /api/v1/%s HTTP/1.1\r\nHost: localhost\r\n"
                       "Content-Length: 0\r\nConnection: close\r\n\r\n",
                       argv[2], argv[3]);
    if (len < 0 || len >= (int)sizeof request) {
        errno = E2BIG;
        return die("request");
    }
    for (int sent = 0; sent < len;) {
        ssize_t n = write(fd, request + sent, len - sent);
        if (n < 0)
            return die("write");
        sent += n;
    }
    static char reply[65536];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, reply + have, sizeof reply - 1 - have);
        if (n < 0)
            return die("read");
        if (n == 0 || (have += n) == sizeof reply - 1)
            break;
    }
    reply[have] = 0;
    int status = 0;
    if (sscanf(reply, "HTTP/1.%*d %d", &status) != 1) {
        printf("error:reply:no status line\n");
        return 2;
    }
    char *body = strstr(reply, "\r\n\r\n");
    body = body ? body + 4 : "";
    for (char *c = body; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    printf("%d %s\n", status, body);
    return status >= 200 && status < 300 ? 0 : 1;
}
