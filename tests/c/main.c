// SPDX-License-Identifier: MIT
/* The runner: `iopf-ctest --list`, `iopf-ctest NAME...` (each case in turn). */
#include <stdarg.h>

#include "ctest.h"

#define MAX_TESTS 512

static struct {
	const char *name;
	void (*fn)(void);
} tests[MAX_TESTS];
static int ntests;
static const char *current;

void ctest_register(const char *name, void (*fn)(void))
{
	if (ntests < MAX_TESTS) {
		tests[ntests].name = name;
		tests[ntests].fn = fn;
		ntests++;
	}
}

void ctest_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "FAIL %s: %s:%d: ", current ? current : "?", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

void ctest_skip(const char *fmt, ...)
{
	va_list ap;

	printf("SKIP %s: ", current ? current : "?");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	exit(CTEST_SKIP);
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--list") == 0) {
		for (int i = 0; i < ntests; i++)
			printf("%s\n", tests[i].name);
		return 0;
	}
	if (argc < 2) {
		fprintf(stderr, "usage: %s --list | NAME...\n", argv[0]);
		return 2;
	}
	for (int a = 1; a < argc; a++) {
		int i;
		for (i = 0; i < ntests && strcmp(tests[i].name, argv[a]) != 0; i++)
			;
		if (i == ntests) {
			fprintf(stderr, "no test named %s\n", argv[a]);
			return 2;
		}
		current = tests[i].name;
		tests[i].fn();
		printf("ok %s\n", current);
	}
	return 0;
}
