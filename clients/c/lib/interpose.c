// SPDX-License-Identifier: MIT
/*
 * The libc entry points libiopf-preload replaces (LD_PRELOAD, or linked ahead of
 * libc): open() of "/dev/iommu" and "/dev/vfio/devices/vfioN" returns a real fd
 * (a /dev/null behind it) that the fd table knows; read, write, ioctl and close on
 * those fds are served here, and everything else goes to libc untouched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"

struct iopf_real iopf_real;

static struct {
	int (*open64)(const char *, int, ...);
	int (*openat64)(int, const char *, int, ...);
	int (*open_2)(const char *, int);
	int (*open64_2)(const char *, int);
	int (*openat_2)(int, const char *, int);
	int (*openat64_2)(int, const char *, int);
	ssize_t (*read_chk)(int, void *, size_t, size_t);
} more;

static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static void *must(const char *name)
{
	void *p = dlsym(RTLD_NEXT, name);
	if (!p) {
		fprintf(stderr, "libiopf-preload: %s not found: %s\n", name, dlerror());
		abort();
	}
	return p;
}

static void resolve_real(void)
{
	iopf_real.open = must("open");
	iopf_real.openat = must("openat");
	iopf_real.close = must("close");
	iopf_real.read = must("read");
	iopf_real.write = must("write");
	iopf_real.ioctl = must("ioctl");
	more.open64 = must("open64");
	more.openat64 = must("openat64");
	more.open_2 = dlsym(RTLD_NEXT, "__open_2");
	more.open64_2 = dlsym(RTLD_NEXT, "__open64_2");
	more.openat_2 = dlsym(RTLD_NEXT, "__openat_2");
	more.openat64_2 = dlsym(RTLD_NEXT, "__openat64_2");
	more.read_chk = dlsym(RTLD_NEXT, "__read_chk");
}

void iopf_real_init(void)
{
	pthread_once(&real_once, resolve_real);
}

void iopf_debug(const char *fmt, ...)
{
	va_list ap;

	if (!getenv("IOPF_DEBUG"))
		return;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

/* Everything below is what the library exports: the program's libc calls land here. */
#pragma GCC visibility push(default)

/* --- open ------------------------------------------------------------------------ */

enum { PATH_OTHER, PATH_IOMMU, PATH_VFIO };

/* "/dev/iommu", or "/dev/vfio/devices/vfioN" with N in decimal as devtmpfs names it. */
static int classify(const char *path, unsigned *index)
{
	static const char vfio[] = "/dev/vfio/devices/vfio";
	const char *p;
	unsigned long n = 0;

	if (!path)
		return PATH_OTHER;
	if (strcmp(path, "/dev/iommu") == 0)
		return PATH_IOMMU;
	if (strncmp(path, vfio, sizeof(vfio) - 1) != 0)
		return PATH_OTHER;
	p = path + sizeof(vfio) - 1;
	if (*p < '0' || *p > '9' || (p[0] == '0' && p[1]))
		return PATH_OTHER;
	for (; *p; p++) {
		if (*p < '0' || *p > '9' || n > 100000)
			return PATH_OTHER;
		n = n * 10 + (unsigned long)(*p - '0');
	}
	*index = (unsigned)n;
	return PATH_VFIO;
}

static int open_ours(int kind, unsigned index, int flags)
{
	struct iopf_file *f;
	int fd, rc;

	fd = iopf_real.open("/dev/null", O_RDWR | (flags & O_CLOEXEC));
	if (fd < 0)
		return -1;
	f = file_new(kind == PATH_IOMMU ? IOPF_IOMMUFD : IOPF_VFIO, fd);
	if (!f) {
		iopf_real.close(fd);
		errno = ENOMEM;
		return -1;
	}
	rc = kind == PATH_IOMMU ? iommufd_open(f) : vfio_open(f, index);
	if (!rc) {
		rc = fdtab_install(f);
		if (rc) {
			if (f->kind == IOPF_IOMMUFD)
				iommufd_release(f);
			else
				vfio_release(f);
		}
	}
	if (rc) {
		file_put(f);
		iopf_real.close(fd);
		errno = -rc;
		return -1;
	}
	return fd;
}

static bool open_needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

int iopf_open_dev(bool iommu, unsigned index, int flags)
{
	return open_ours(iommu ? PATH_IOMMU : PATH_VFIO, index, flags);
}

/* The device nodes by their devtmpfs names, then everything devtree.c serves. */
bool iopf_open_served(int dirfd, const char *path, int flags, int *fd)
{
	unsigned index = 0;
	int kind = classify(path, &index);

	if (kind != PATH_OTHER) {
		*fd = open_ours(kind, index, flags);
		return true;
	}
	return vfs_try_open(dirfd, path, flags, fd);
}

#define OPEN_BODY(dirfd, call_real)                                   \
	mode_t mode = 0;                                              \
	int fd_;                                                      \
	iopf_real_init();                                             \
	if (open_needs_mode(flags)) {                                 \
		va_list ap;                                           \
		va_start(ap, flags);                                  \
		mode = (mode_t)va_arg(ap, int);                       \
		va_end(ap);                                           \
	}                                                             \
	if (iopf_open_served(dirfd, path, flags, &fd_))               \
		return fd_;                                           \
	return call_real

int open(const char *path, int flags, ...)
{
	OPEN_BODY(AT_FDCWD, iopf_real.open(path, flags, mode));
}

int open64(const char *path, int flags, ...)
{
	OPEN_BODY(AT_FDCWD, more.open64(path, flags, mode));
}

int openat(int dirfd, const char *path, int flags, ...)
{
	OPEN_BODY(dirfd, iopf_real.openat(dirfd, path, flags, mode));
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	OPEN_BODY(dirfd, more.openat64(dirfd, path, flags, mode));
}

/* _FORTIFY_SOURCE builds call these instead of open(). */
int __open_2(const char *path, int flags)
{
	int fd;

	iopf_real_init();
	if (iopf_open_served(AT_FDCWD, path, flags, &fd))
		return fd;
	return more.open_2 ? more.open_2(path, flags) : iopf_real.open(path, flags);
}

int __open64_2(const char *path, int flags)
{
	int fd;

	iopf_real_init();
	if (iopf_open_served(AT_FDCWD, path, flags, &fd))
		return fd;
	return more.open64_2 ? more.open64_2(path, flags) : more.open64(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	int fd;

	iopf_real_init();
	if (iopf_open_served(dirfd, path, flags, &fd))
		return fd;
	return more.openat_2 ? more.openat_2(dirfd, path, flags) : iopf_real.openat(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	int fd;

	iopf_real_init();
	if (iopf_open_served(dirfd, path, flags, &fd))
		return fd;
	return more.openat64_2 ? more.openat64_2(dirfd, path, flags)
			       : more.openat64(dirfd, path, flags);
}

/* --- close, read, write ----------------------------------------------------------- */

int close(int fd)
{
	struct iopf_file *f;

	iopf_real_init();
	f = fdtab_remove(fd);
	if (f) {
		switch (f->kind) {
		case IOPF_IOMMUFD:
			iommufd_release(f);
			break;
		case IOPF_VFIO:
			vfio_release(f);
			break;
		case IOPF_FAULT:
			fault_release(f);
			break;
		case IOPF_NODE: /* nothing behind it but the fd */
			break;
		}
		file_put(f);
	}
	return iopf_real.close(fd);
}

static ssize_t ret_errno(ssize_t rc)
{
	if (rc < 0) {
		errno = (int)-rc;
		return -1;
	}
	return rc;
}

static ssize_t read_ours(struct iopf_file *f, void *buf, size_t count)
{
	/* iommufd and the VFIO cdev model no read(): a file without a read op is EINVAL. */
	ssize_t rc = f->kind == IOPF_FAULT ? fault_read(f, buf, count) : -EINVAL;

	file_put(f);
	return ret_errno(rc);
}

ssize_t read(int fd, void *buf, size_t count)
{
	struct iopf_file *f;

	iopf_real_init();
	f = fdtab_get(fd);
	if (f && f->kind == IOPF_NODE) /* a sysfs file: its memfd */
		file_put(f), f = NULL;
	if (!f)
		return iopf_real.read(fd, buf, count);
	return read_ours(f, buf, count);
}

ssize_t __read_chk(int fd, void *buf, size_t count, size_t buflen)
{
	struct iopf_file *f;

	iopf_real_init();
	if (count > buflen || !more.read_chk) /* let libc report the overflow */
		return more.read_chk ? more.read_chk(fd, buf, count, buflen) : -1;
	f = fdtab_get(fd);
	if (f && f->kind == IOPF_NODE)
		file_put(f), f = NULL;
	if (!f)
		return more.read_chk(fd, buf, count, buflen);
	return read_ours(f, buf, count);
}

ssize_t write(int fd, const void *buf, size_t count)
{
	struct iopf_file *f;
	ssize_t rc;

	iopf_real_init();
	f = fdtab_get(fd);
	if (f && f->kind == IOPF_NODE)
		file_put(f), f = NULL;
	if (!f)
		return iopf_real.write(fd, buf, count);
	rc = f->kind == IOPF_FAULT ? fault_write(f, buf, count) : -EINVAL;
	file_put(f);
	return ret_errno(rc);
}

/* --- ioctl ------------------------------------------------------------------------ */

/* do_vfs_ioctl() serves these for every file before the driver sees the number. */
static bool vfs_generic_ioctl(unsigned long cmd)
{
	return cmd == FIOCLEX || cmd == FIONCLEX || cmd == FIONBIO || cmd == FIOASYNC;
}

int ioctl(int fd, unsigned long cmd, ...)
{
	struct iopf_file *f;
	va_list ap;
	void *arg;
	long rc;

	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	iopf_real_init();
	f = fdtab_get(fd);
	if (f && f->kind == IOPF_NODE)
		file_put(f), f = NULL;
	if (!f)
		return iopf_real.ioctl(fd, cmd, arg);
	if (vfs_generic_ioctl(cmd)) {
		file_put(f);
		return iopf_real.ioctl(fd, cmd, arg);
	}
	switch (f->kind) {
	case IOPF_IOMMUFD:
		rc = iommufd_ioctl(f, cmd, arg);
		break;
	case IOPF_VFIO:
		rc = vfio_ioctl(f, cmd, arg);
		break;
	default: /* the fault fd has no ioctl op */
		rc = -ENOTTY;
		break;
	}
	file_put(f);
	return (int)ret_errno(rc);
}

#pragma GCC visibility pop
