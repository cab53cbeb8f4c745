/* Runs a program on a pseudo-terminal, as a terminal emulator would, for
 * the Linux tier (built static by the harness, so it runs in L1 as is).
 *   pty-run COLS ROWS OUT TRIGGER NEWCOLS NEWROWS -- PROGRAM ARG...
 * The terminal starts at COLSxROWS; PROGRAM gets a session of its own
 * with the terminal as its controlling terminal and stdin and stdout
 * (stderr stays ours). What it writes is copied to OUT. Once TRIGGER
 * has appeared in that output, the terminal is resized to
 * NEWCOLSxNEWROWS, and the kernel sends SIGWINCH to PROGRAM. Exits with
 * PROGRAM's status (128+N for signal N). Every failure prints one line
 * naming the call and exits 125. */
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int die(const char *what) {
    fprintf(stderr, "pty-run: %s: %s\n", what, strerror(errno));
    return 125;
}

static int resize(int fd, const char *cols, const char *rows) {
    struct winsize ws = {0};
    ws.ws_col = (unsigned short)atoi(cols);
    ws.ws_row = (unsigned short)atoi(rows);
    return ioctl(fd, TIOCSWINSZ, &ws);
}

int main(int argc, char **argv) {
    if (argc < 9 || strcmp(argv[7], "--")) {
        fprintf(stderr, "usage: pty-run COLS ROWS OUT TRIGGER NEWCOLS NEWROWS -- PROGRAM ARG...\n");
        return 125;
    }
    const char *trigger = argv[4];
    int out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0)
        return die(argv[3]);
    int controller, terminal;
    if (openpty(&controller, &terminal, NULL, NULL, NULL) < 0)
        return die("openpty");
    if (resize(controller, argv[1], argv[2]) < 0)
        return die("TIOCSWINSZ");
    pid_t child = fork();
    if (child < 0)
        return die("fork");
    if (child == 0) {
        close(controller);
        if (setsid() < 0 || ioctl(terminal, TIOCSCTTY, 0) < 0)
            _exit(die("setsid"));
        dup2(terminal, 0);
        dup2(terminal, 1);
        if (terminal > 1)
            close(terminal);
        execvp(argv[8], argv + 8);
        _exit(die(argv[8]));
    }
    close(terminal);
    /* The tail of the output, long enough to hold TRIGGER across reads. */
    char seen[512] = {0};
    size_t want = strlen(trigger);
    int resized = want == 0 || want >= sizeof seen / 2;
    for (;;) {
        char buf[4096];
        ssize_t n = read(controller, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* EIO: the program and its children closed the terminal */
        if (write(out, buf, (size_t)n) != n)
            return die("write");
        if (!resized) {
            size_t keep = strlen(seen);
            size_t take = (size_t)n < sizeof seen - 1 ? (size_t)n : sizeof seen - 1;
            if (keep + take > sizeof seen - 1) {
                size_t drop = keep + take - (sizeof seen - 1);
                memmove(seen, seen + drop, keep - drop);
                keep -= drop;
            }
            memcpy(seen + keep, buf + n - take, take);
            seen[keep + take] = 0;
            /* NUL bytes in the output would hide what follows them. */
            for (size_t i = keep; i < keep + take; i++)
                if (!seen[i])
                    seen[i] = ' ';
            if (strstr(seen, trigger)) {
                if (resize(controller, argv[5], argv[6]) < 0)
                    return die("TIOCSWINSZ");
                resized = 1;
            }
        }
    }
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR)
            return die("waitpid");
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
