/* An alarm through /dev/rtc0, as a guest's alarm user sets one: the RTC's
 * time, an alarm two seconds on (RTC_ALM_SET, RTC_AIE_ON), then a read that
 * blocks until the interrupt (polled for 60 s, a hang detector). One line:
 * "rtc-alarm fired=1 flags=0x.. count=N rtc=T alarm=T waited_ms=N", or
 * "rtc-alarm fired=0 error=STEP:REASON". */
#include <errno.h>
#include <fcntl.h>
#include <linux/rtc.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static int fail(const char *step)
{
	printf("rtc-alarm fired=0 error=%s:%s\n", step, strerror(errno));
	return 1;
}

int main(void)
{
	int fd = open("/dev/rtc0", O_RDONLY);
	if (fd < 0)
		return fail("open");
	struct rtc_time rtc;
	if (ioctl(fd, RTC_RD_TIME, &rtc))
		return fail("RTC_RD_TIME");
	struct tm tm = {
		.tm_sec = rtc.tm_sec, .tm_min = rtc.tm_min, .tm_hour = rtc.tm_hour,
		.tm_mday = rtc.tm_mday, .tm_mon = rtc.tm_mon, .tm_year = rtc.tm_year,
	};
	time_t now = timegm(&tm);
	time_t at = now + 2;
	struct tm when;
	gmtime_r(&at, &when);
	struct rtc_time alarm = {
		.tm_sec = when.tm_sec, .tm_min = when.tm_min, .tm_hour = when.tm_hour,
		.tm_mday = when.tm_mday, .tm_mon = when.tm_mon, .tm_year = when.tm_year,
	};
	if (ioctl(fd, RTC_ALM_SET, &alarm))
		return fail("RTC_ALM_SET");
	if (ioctl(fd, RTC_AIE_ON, 0))
		return fail("RTC_AIE_ON");
	long long start = now_ms();
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int ready = poll(&p, 1, 60000);
	if (ready < 0)
		return fail("poll");
	if (ready == 0) {
		printf("rtc-alarm fired=0 error=no-interrupt-in-60s\n");
		return 1;
	}
	unsigned long data;
	if (read(fd, &data, sizeof data) != sizeof data)
		return fail("read");
	long long waited = now_ms() - start;
	ioctl(fd, RTC_AIE_OFF, 0);
	printf("rtc-alarm fired=1 flags=0x%lx count=%lu rtc=%lld alarm=%lld waited_ms=%lld\n",
	       data & 0xff, data >> 8, (long long)now, (long long)at, waited);
	return 0;
}
