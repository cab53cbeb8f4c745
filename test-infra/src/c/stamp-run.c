/* Runs a VMM and times what its guest prints: stamp-run MARK SECS LOG --
 * ARGV... starts ARGV with stdin from /dev/null, stderr to LOG and stdout
 * through a pipe that is copied to our stdout; then prints one line to
 * stderr: "stamp first_byte_ms=N mark_ms=N exit_ms=N status=N maxrss_kb=N"
 * (times from the start, -1 for what never came; status 128+N for signal
 * N). After SECS seconds the program is killed (a hang detector). Peak RSS
 * is the waited child's, from wait4(). Used by `ci/bench --only linux`,
 * where it runs each VMM the same way. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long start_ms;

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static pid_t child;

static void on_alarm(int sig)
{
	(void)sig;
	kill(child, SIGKILL);
}

int main(int argc, char **argv)
{
	if (argc < 6 || strcmp(argv[4], "--") != 0) {
		fprintf(stderr, "usage: stamp-run MARK SECS LOG -- ARGV...\n");
		return 2;
	}
	const char *mark = argv[1];
	size_t mark_len = strlen(mark);
	int secs = atoi(argv[2]);
	int pipefd[2];
	if (pipe(pipefd)) {
		perror("pipe");
		return 2;
	}
	start_ms = now_ms();
	child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0) {
		int in = open("/dev/null", O_RDONLY);
		int log = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (in < 0 || log < 0) {
			perror(argv[3]);
			_exit(127);
		}
		dup2(in, 0);
		dup2(pipefd[1], 1);
		dup2(log, 2);
		close(pipefd[0]);
		execvp(argv[5], &argv[5]);
		perror(argv[5]);
		_exit(127);
	}
	close(pipefd[1]);
	signal(SIGALRM, on_alarm);
	alarm(secs);
	long long first = -1, marked = -1;
	/* The last mark_len - 1 bytes of the previous read, for a mark split
	 * across two reads. */
	char buf[4096 + 256];
	size_t kept = 0;
	for (;;) {
		ssize_t n = read(pipefd[0], buf + kept, 4096);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (first < 0)
			first = now_ms() - start_ms;
		if (fwrite(buf + kept, 1, n, stdout) != (size_t)n)
			break;
		size_t len = kept + n;
		if (marked < 0 && mark_len > 0 && len >= mark_len) {
			for (size_t i = 0; i + mark_len <= len; i++) {
				if (memcmp(buf + i, mark, mark_len) == 0) {
					marked = now_ms() - start_ms;
					break;
				}
			}
		}
		kept = mark_len > 1 && mark_len - 1 < 256 ? mark_len - 1 : 0;
		if (kept > len)
			kept = len;
		memmove(buf, buf + len - kept, kept);
	}
	fflush(stdout);
	int status;
	struct rusage usage;
	while (wait4(child, &status, 0, &usage) < 0)
		if (errno != EINTR) {
			perror("wait4");
			return 2;
		}
	long long exited = now_ms() - start_ms;
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	fprintf(stderr, "stamp first_byte_ms=%lld mark_ms=%lld exit_ms=%lld status=%d maxrss_kb=%ld\n",
		first, marked, exited, code, usage.ru_maxrss);
	return 0;
}
