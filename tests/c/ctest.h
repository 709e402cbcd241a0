/* SPDX-License-Identifier: MIT */
/*
 * A small test harness in the kernel selftests' manner: TEST(name) registers a
 * case, ASSERT_* stop it with file:line. `iopf-ctest NAME` runs one case in this
 * process (tests/c/test_c_uapi.py runs each against a live daemon and then checks
 * the daemon's exactly-once identity); `--list` prints them; exit 77 is a skip.
 */
#ifndef CTEST_H
#define CTEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iopf.h"
#include "iopf_uapi.h"

#define CTEST_SKIP 77

void ctest_register(const char *name, void (*fn)(void));
void ctest_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 3, 4)));
void ctest_skip(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

#define TEST(name)                                                        \
	static void name(void);                                           \
	__attribute__((constructor)) static void name##_register(void)    \
	{                                                                 \
		ctest_register(#name, name);                              \
	}                                                                 \
	static void name(void)

#define ASSERT_EQ(a, b)                                                               \
	do {                                                                          \
		unsigned long long _a = (unsigned long long)(a);                      \
		unsigned long long _b = (unsigned long long)(b);                      \
		if (_a != _b)                                                         \
			ctest_fail(__FILE__, __LINE__, "%s == %s: %#llx != %#llx", #a, #b, \
				   _a, _b);                                           \
	} while (0)

#define ASSERT_NE(a, b)                                                               \
	do {                                                                          \
		unsigned long long _a = (unsigned long long)(a);                      \
		unsigned long long _b = (unsigned long long)(b);                      \
		if (_a == _b)                                                         \
			ctest_fail(__FILE__, __LINE__, "%s != %s: both %#llx", #a, #b, _a); \
	} while (0)

#define ASSERT_TRUE(x)                                                                \
	do {                                                                          \
		if (!(x))                                                             \
			ctest_fail(__FILE__, __LINE__, "%s", #x);                     \
	} while (0)

/* The call succeeds (returns 0). */
#define ASSERT_OK(expr)                                                               \
	do {                                                                          \
		errno = 0;                                                            \
		long long _r = (long long)(expr);                                     \
		if (_r != 0)                                                          \
			ctest_fail(__FILE__, __LINE__, "%s: returned %lld, errno %s", #expr, \
				   _r, strerrorname_np(errno) ? strerrorname_np(errno) : "0"); \
	} while (0)

/* The call fails with -1 and errno @err, as the kernel's would. */
#define ASSERT_ERR(err, expr)                                                         \
	do {                                                                          \
		errno = 0;                                                            \
		long long _r = (long long)(expr);                                     \
		int _e = errno;                                                       \
		if (_r != -1 || _e != (err))                                          \
			ctest_fail(__FILE__, __LINE__, "%s: expected -1/%s, got %lld/%s", \
				   #expr, strerrorname_np(err), _r,                   \
				   _e ? strerrorname_np(_e) : "0");                   \
	} while (0)

#define SKIP(...) ctest_skip(__VA_ARGS__)

/* --- helpers.c: the objects most tests need, each asserting success ---------------- */

#define RW (IOPF_PERM_READ | IOPF_PERM_WRITE)
#define PAGE 4096ull
#define MAP_RW (IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE)

/* The daemon's default topology, by vfioN. */
enum {
	DEV_PRI_PASID = 0,  /* 0000:3a:00.0: PRI, ATS, 20-bit PASID */
	DEV_PF_WITH_VFS = 1,/* 0000:3b:00.0: PRI, its VFs are 2 and 3 */
	DEV_VF = 2,         /* 0000:3b:00.1 */
	DEV_NO_PRI = 4,     /* 0000:3c:00.0: ATS and PASID, no PRI */
	DEV_PRI_PASID2 = 5, /* 0000:5a:00.0 on the second unit */
	DEV_PRI_NO_PASID = 6, /* 0000:5b:00.0 */
	DEV_COUNT = 8,
};

/* A daemon capability the harness found (IOPF_TEST_CAPS); tests that need a missing
 * one skip, naming it. */
bool t_has(const char *cap);
void t_need(const char *cap);

int t_iommufd(void);
uint32_t t_ioas(int iommufd);
int t_dev(unsigned index);
uint32_t t_bind(int dev, int iommufd);
uint32_t t_fault(int iommufd, int *fault_fd);
uint32_t t_hwpt(int iommufd, uint32_t dev_id, uint32_t pt_id, uint32_t flags, uint32_t fault_id);
uint32_t t_nested(int iommufd, uint32_t dev_id, uint32_t parent, uint32_t flags,
		  uint32_t fault_id);
int t_attach(int dev, uint32_t pt_id, int pasid); /* returns the ioctl's result */
int t_detach(int dev, int pasid);
void t_map(int iommufd, uint32_t ioas, uint64_t iova, uint64_t length);
int t_destroy(int iommufd, uint32_t id);

/* A transfer in a thread of its own: iopf_dma() blocks until its faults are answered. */
struct t_dma {
	pthread_t thread;
	int dev, pasid;
	uint64_t iova, length;
	unsigned perm;
	struct iopf_dma_result result;
	int rc, err;
	volatile int done;
};
#include <pthread.h>
void t_dma_start(struct t_dma *d, int dev, int pasid, uint64_t iova, uint64_t length,
		 unsigned perm);
int t_dma_join(struct t_dma *d); /* the status; asserts the call itself worked */

/* Waits up to @timeout_ms for the fault fd to be readable; true if it is. */
bool t_readable(int fault_fd, int timeout_ms);
/* Polls, then reads whatever fits in @max records; returns the records read. */
size_t t_read(int fault_fd, struct iommu_hwpt_pgfault *recs, size_t max, int timeout_ms);
ssize_t t_respond(int fault_fd, uint32_t cookie, uint32_t code);

/* One fault-capable paging HWPT on an IOAS, attached to a device's RID. */
struct t_env {
	int iommufd;
	uint32_t ioas;
	int dev;
	uint32_t dev_id;
	uint32_t fault_id;
	int fault_fd;
	uint32_t hwpt;
};
void t_env_up(struct t_env *e, unsigned dev_index, uint32_t hwpt_flags);
void t_env_down(struct t_env *e);
/* Serves the fault fd until @d is done: maps each faulting page (when @code is
 * SUCCESS) and answers every group with @code. Returns the groups answered. */
int t_serve(struct t_env *e, struct t_dma *d, uint32_t code);

#endif /* CTEST_H */
