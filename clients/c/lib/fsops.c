// SPDX-License-Identifier: MIT
/*
 * The libc calls on paths that devtree.c serves: the stat family (glibc 2.36 exports
 * stat, lstat, fstat, fstatat and their *64 aliases, the __xstat family, and statx;
 * stat() does not reach fstatat() through the PLT, so each is replaced), access,
 * faccessat, euidaccess/eaccess, readlink, readlinkat (and their _FORTIFY_SOURCE
 * variants), opendir, fdopendir, readdir(64)(_r), closedir, dirfd, rewinddir, telldir,
 * seekdir, and fopen (glibc opens without the PLT). A path that is not ours costs one
 * prefix compare and goes to libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "internal.h"

/* glibc 2.36 still exports these; its headers no longer declare them. */
int __xstat(int ver, const char *path, struct stat *st);
int __lxstat(int ver, const char *path, struct stat *st);
int __fxstat(int ver, int fd, struct stat *st);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags);
int __xstat64(int ver, const char *path, struct stat64 *st);
int __lxstat64(int ver, const char *path, struct stat64 *st);
int __fxstat64(int ver, int fd, struct stat64 *st);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags);
ssize_t __readlink_chk(const char *path, char *buf, size_t len, size_t buflen);
ssize_t __readlinkat_chk(int dirfd, const char *path, char *buf, size_t len, size_t buflen);

_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "LP64: one stat layout");
_Static_assert(sizeof(struct dirent) == sizeof(struct dirent64), "LP64: one dirent layout");

/* The next definition of @fn (libc's), looked up once. */
#define REAL(fn)                                                                   \
	({                                                                         \
		static __typeof__(&fn) real_;                                      \
		__typeof__(&fn) p_ = __atomic_load_n(&real_, __ATOMIC_RELAXED);    \
		if (!p_) {                                                         \
			p_ = (__typeof__(&fn))dlsym(RTLD_NEXT, #fn);               \
			__atomic_store_n(&real_, p_, __ATOMIC_RELAXED);            \
		}                                                                  \
		p_;                                                                \
	})

static int fail(int err)
{
	errno = err;
	return -1;
}

/* --- lookups -------------------------------------------------------------------------------- */

/* @path, absolute, or relative to @dirfd when that is a directory of ours. 1: not ours. */
static int lookup_at(int dirfd, const char *path, bool follow, struct vnode *vn)
{
	char buf[PATH_MAX];
	struct iopf_file *f;

	if (!path)
		return 1;
	if (path[0] == '/')
		return vfs_lookup(path, follow, vn);
	if (dirfd == AT_FDCWD || !(f = fdtab_get(dirfd)))
		return 1;
	if (f->kind != IOPF_NODE) {
		file_put(f);
		return 1;
	}
	snprintf(buf, sizeof(buf), "%s/%s", f->u.node.path, path);
	file_put(f);
	return vfs_lookup(buf, follow, vn);
}

/* The node behind one of our fds; 1: not ours (or a fault fd: a socket, as documented). */
static int node_of_fd(int fd, struct vnode *vn)
{
	struct iopf_file *f = fdtab_get(fd);
	int rc = 0;

	if (!f)
		return 1;
	switch (f->kind) {
	case IOPF_IOMMUFD:
		vfs_dev_node(vn, true, 0);
		break;
	case IOPF_VFIO:
		vfs_dev_node(vn, false, f->u.vfio.index);
		break;
	case IOPF_NODE: {
		struct stat real;
		/* closed behind our back (fclose, close_range) and the number reused? */
		if (REAL(fstat)(fd, &real) || real.st_dev != f->u.node.dev ||
		    real.st_ino != f->u.node.ino) {
			struct iopf_file *stale = fdtab_remove(fd);
			if (stale)
				file_put(stale);
			rc = 1;
			break;
		}
		rc = vfs_lookup(f->u.node.path, true, vn);
		if (rc == 1)
			rc = -ENOENT;
		break;
	}
	default:
		rc = 1;
		break;
	}
	file_put(f);
	return rc;
}

/* --- open ------------------------------------------------------------------------------------- */

static int install_node(int fd, const struct vnode *vn)
{
	struct iopf_file *f = file_new(IOPF_NODE, fd);
	int rc;

	if (!f) {
		iopf_real.close(fd);
		return fail(ENOMEM);
	}
	snprintf(f->u.node.path, sizeof(f->u.node.path), "%s", vn->path);
	struct stat real;
	if (REAL(fstat)(fd, &real) == 0) {
		f->u.node.dev = real.st_dev;
		f->u.node.ino = real.st_ino;
	}
	rc = fdtab_install(f);
	if (rc) {
		file_put(f);
		iopf_real.close(fd);
		return fail(-rc);
	}
	return fd;
}

/* A sysfs attribute is a read-only fd on a memfd holding its text; a directory is a
 * /dev/null fd that fstat, openat and fdopendir know as the directory. */
int vfs_open(const struct vnode *vn, int flags)
{
	int acc = flags & O_ACCMODE, fd, ro;

	if ((flags & O_CREAT) && (flags & O_EXCL))
		return fail(EEXIST);
	if (vn->type == VN_LNK) /* only a no-follow lookup ends on a link */
		return fail((flags & O_PATH) ? EOPNOTSUPP : ELOOP);
	if (vn->type == VN_DIR) {
		if (acc != O_RDONLY || (flags & O_CREAT))
			return fail(EISDIR);
		fd = iopf_real.open("/dev/null", O_RDONLY | (flags & O_CLOEXEC));
		return fd < 0 ? -1 : install_node(fd, vn);
	}
	if (flags & O_DIRECTORY)
		return fail(ENOTDIR);
	if (acc != O_RDONLY) /* kernfs: no store op, no write open */
		return fail(EACCES);
	fd = memfd_create("iopf-sysfs", MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	if (iopf_real.write(fd, vn->text, strlen(vn->text)) < 0) {
		int err = errno;
		iopf_real.close(fd);
		return fail(err);
	}
	/* Reopened read-only: write() is EBADF, as on a file opened O_RDONLY. */
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	ro = iopf_real.open(self, O_RDONLY | (flags & (O_CLOEXEC | O_NONBLOCK)));
	if (ro >= 0) {
		iopf_real.close(fd);
		fd = ro;
	} else {
		lseek(fd, 0, SEEK_SET);
		if (!(flags & O_CLOEXEC))
			fcntl(fd, F_SETFD, 0);
	}
	return install_node(fd, vn);
}

bool vfs_try_open(int dirfd, const char *path, int flags, int *fd)
{
	struct vnode vn;
	int rc = lookup_at(dirfd, path, !(flags & O_NOFOLLOW), &vn);

	if (rc == 1)
		return false;
	if (rc == -ENOENT && (flags & O_CREAT))
		rc = -EACCES;
	if (rc < 0) {
		*fd = fail(-rc);
		return true;
	}
	if (vn.type == VN_CHR) { /* /dev/iommu or a vfioN, by another spelling */
		*fd = iopf_open_dev(vn.rdev_major == 10, vn.rdev_minor, flags);
		return true;
	}
	*fd = vfs_open(&vn, flags);
	return true;
}

#pragma GCC visibility push(default)

/* --- the stat family --------------------------------------------------------------------------- */

static int stat_at(int dirfd, const char *path, struct stat *st, int flags)
{
	struct vnode vn;
	int rc;

	if ((flags & AT_EMPTY_PATH) && path && !*path)
		rc = node_of_fd(dirfd, &vn);
	else
		rc = lookup_at(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &vn);
	if (rc <= 0) {
		if (rc < 0)
			return fail(-rc);
		vfs_stat(&vn, st);
	}
	return rc; /* 1: the caller asks libc */
}

static int fstat_fd(int fd, struct stat *st)
{
	struct vnode vn;
	int rc = node_of_fd(fd, &vn);

	if (rc < 0)
		return fail(-rc);
	if (!rc)
		vfs_stat(&vn, st);
	return rc;
}

int stat(const char *restrict path, struct stat *restrict st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, st, 0);
	return rc == 1 ? REAL(stat)(path, st) : rc;
}

int stat64(const char *restrict path, struct stat64 *restrict st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, (struct stat *)st, 0);
	return rc == 1 ? REAL(stat64)(path, st) : rc;
}

int lstat(const char *restrict path, struct stat *restrict st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW);
	return rc == 1 ? REAL(lstat)(path, st) : rc;
}

int lstat64(const char *restrict path, struct stat64 *restrict st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, (struct stat *)st, AT_SYMLINK_NOFOLLOW);
	return rc == 1 ? REAL(lstat64)(path, st) : rc;
}

int fstat(int fd, struct stat *st)
{
	iopf_real_init();
	int rc = fstat_fd(fd, st);
	return rc == 1 ? REAL(fstat)(fd, st) : rc;
}

int fstat64(int fd, struct stat64 *st)
{
	iopf_real_init();
	int rc = fstat_fd(fd, (struct stat *)st);
	return rc == 1 ? REAL(fstat64)(fd, st) : rc;
}

int fstatat(int dirfd, const char *restrict path, struct stat *restrict st, int flags)
{
	iopf_real_init();
	int rc = stat_at(dirfd, path, st, flags);
	return rc == 1 ? REAL(fstatat)(dirfd, path, st, flags) : rc;
}

int fstatat64(int dirfd, const char *restrict path, struct stat64 *restrict st, int flags)
{
	iopf_real_init();
	int rc = stat_at(dirfd, path, (struct stat *)st, flags);
	return rc == 1 ? REAL(fstatat64)(dirfd, path, st, flags) : rc;
}

int __xstat(int ver, const char *path, struct stat *st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, st, 0);
	return rc == 1 ? REAL(__xstat)(ver, path, st) : rc;
}

int __xstat64(int ver, const char *path, struct stat64 *st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, (struct stat *)st, 0);
	return rc == 1 ? REAL(__xstat64)(ver, path, st) : rc;
}

int __lxstat(int ver, const char *path, struct stat *st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW);
	return rc == 1 ? REAL(__lxstat)(ver, path, st) : rc;
}

int __lxstat64(int ver, const char *path, struct stat64 *st)
{
	iopf_real_init();
	int rc = stat_at(AT_FDCWD, path, (struct stat *)st, AT_SYMLINK_NOFOLLOW);
	return rc == 1 ? REAL(__lxstat64)(ver, path, st) : rc;
}

int __fxstat(int ver, int fd, struct stat *st)
{
	iopf_real_init();
	int rc = fstat_fd(fd, st);
	return rc == 1 ? REAL(__fxstat)(ver, fd, st) : rc;
}

int __fxstat64(int ver, int fd, struct stat64 *st)
{
	iopf_real_init();
	int rc = fstat_fd(fd, (struct stat *)st);
	return rc == 1 ? REAL(__fxstat64)(ver, fd, st) : rc;
}

int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
	iopf_real_init();
	int rc = stat_at(dirfd, path, st, flags);
	return rc == 1 ? REAL(__fxstatat)(ver, dirfd, path, st, flags) : rc;
}

int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
	iopf_real_init();
	int rc = stat_at(dirfd, path, (struct stat *)st, flags);
	return rc == 1 ? REAL(__fxstatat64)(ver, dirfd, path, st, flags) : rc;
}

int statx(int dirfd, const char *restrict path, int flags, unsigned int mask,
	  struct statx *restrict stx)
{
	struct stat st;
	int rc;

	iopf_real_init();
	rc = stat_at(dirfd, path, &st, flags);
	if (rc == 1)
		return REAL(statx)(dirfd, path, flags, mask, stx);
	if (rc)
		return rc;
	memset(stx, 0, sizeof(*stx));
	stx->stx_mask = STATX_BASIC_STATS;
	stx->stx_blksize = (uint32_t)st.st_blksize;
	stx->stx_nlink = (uint32_t)st.st_nlink;
	stx->stx_mode = (uint16_t)st.st_mode;
	stx->stx_ino = st.st_ino;
	stx->stx_size = (uint64_t)st.st_size;
	stx->stx_atime.tv_sec = stx->stx_mtime.tv_sec = stx->stx_ctime.tv_sec = st.st_mtim.tv_sec;
	stx->stx_rdev_major = major(st.st_rdev);
	stx->stx_rdev_minor = minor(st.st_rdev);
	stx->stx_dev_major = major(st.st_dev);
	stx->stx_dev_minor = minor(st.st_dev);
	return 0;
}

/* --- access --------------------------------------------------------------------------------- */

/* do_faccessat() and generic_permission(): owner and group are root. */
static int access_at(int dirfd, const char *path, int mode, int flags)
{
	struct vnode vn;
	unsigned need = 0, have;
	uid_t uid;
	int rc;

	if (mode & ~(R_OK | W_OK | X_OK))
		return fail(EINVAL);
	rc = lookup_at(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &vn);
	if (rc)
		return rc < 0 ? fail(-rc) : 1;
	if (mode == F_OK)
		return 0;
	uid = (flags & AT_EACCESS) ? geteuid() : getuid();
	if (uid == 0) { /* CAP_DAC_OVERRIDE: execute still needs an x bit, or a directory */
		if ((mode & X_OK) && vn.type != VN_DIR && !(vn.mode & 0111))
			return fail(EACCES);
		return 0;
	}
	need = ((mode & R_OK) ? 4 : 0) | ((mode & W_OK) ? 2 : 0) | ((mode & X_OK) ? 1 : 0);
	have = ((flags & AT_EACCESS) ? getegid() : getgid()) == 0 ? (vn.mode >> 3) & 7 : vn.mode & 7;
	return (have & need) == need ? 0 : fail(EACCES);
}

int access(const char *path, int mode)
{
	iopf_real_init();
	int rc = access_at(AT_FDCWD, path, mode, 0);
	return rc == 1 ? REAL(access)(path, mode) : rc;
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
	iopf_real_init();
	int rc = access_at(dirfd, path, mode, flags);
	return rc == 1 ? REAL(faccessat)(dirfd, path, mode, flags) : rc;
}

int euidaccess(const char *path, int mode)
{
	iopf_real_init();
	int rc = access_at(AT_FDCWD, path, mode, AT_EACCESS);
	return rc == 1 ? REAL(euidaccess)(path, mode) : rc;
}

int eaccess(const char *path, int mode)
{
	iopf_real_init();
	int rc = access_at(AT_FDCWD, path, mode, AT_EACCESS);
	return rc == 1 ? REAL(eaccess)(path, mode) : rc;
}

/* --- readlink ------------------------------------------------------------------------------- */

static ssize_t readlink_at(int dirfd, const char *path, char *buf, size_t size)
{
	struct vnode vn;
	size_t len;
	int rc = lookup_at(dirfd, path, false, &vn);

	if (rc)
		return rc < 0 ? fail(-rc) : 1;
	if (vn.type != VN_LNK)
		return fail(EINVAL);
	len = strlen(vn.text);
	if (len > size)
		len = size;
	memcpy(buf, vn.text, len); /* no NUL, as readlink(2) */
	return (ssize_t)len;
}

ssize_t readlink(const char *restrict path, char *restrict buf, size_t size)
{
	iopf_real_init();
	ssize_t rc = readlink_at(AT_FDCWD, path, buf, size);
	return rc == 1 ? REAL(readlink)(path, buf, size) : rc;
}

ssize_t readlinkat(int dirfd, const char *restrict path, char *restrict buf, size_t size)
{
	iopf_real_init();
	ssize_t rc = readlink_at(dirfd, path, buf, size);
	return rc == 1 ? REAL(readlinkat)(dirfd, path, buf, size) : rc;
}

ssize_t __readlink_chk(const char *path, char *buf, size_t len, size_t buflen)
{
	iopf_real_init();
	if (len > buflen) /* let libc report the overflow */
		return REAL(__readlink_chk)(path, buf, len, buflen);
	ssize_t rc = readlink_at(AT_FDCWD, path, buf, len);
	return rc == 1 ? REAL(__readlink_chk)(path, buf, len, buflen) : rc;
}

ssize_t __readlinkat_chk(int dirfd, const char *path, char *buf, size_t len, size_t buflen)
{
	iopf_real_init();
	if (len > buflen)
		return REAL(__readlinkat_chk)(dirfd, path, buf, len, buflen);
	ssize_t rc = readlink_at(dirfd, path, buf, len);
	return rc == 1 ? REAL(__readlinkat_chk)(dirfd, path, buf, len, buflen) : rc;
}

/* --- directories ------------------------------------------------------------------------------ */

/* A DIR * of ours: the program only ever holds it as an opaque pointer. */
struct vdir {
	int fd;
	size_t pos, n;
	struct vdirent *ents;
	char path[256];
	struct dirent64 de;
	struct vdir *next;
};

static pthread_mutex_t dirs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vdir *dirs;
static atomic_int ndirs; /* 0: no DIR is ours, and the check costs one load */

static struct vdir *vdir_of(void *dp)
{
	struct vdir *d;

	if (!dp || !atomic_load_explicit(&ndirs, memory_order_acquire))
		return NULL;
	pthread_mutex_lock(&dirs_lock);
	for (d = dirs; d && (void *)d != dp; d = d->next)
		;
	pthread_mutex_unlock(&dirs_lock);
	return d;
}

/* Takes @fd (a directory fd of ours). */
static DIR *vdir_new(int fd, const struct vnode *vn)
{
	struct vdir *d = calloc(1, sizeof(*d));
	int rc;

	if (!d)
		return errno = ENOMEM, NULL;
	rc = vfs_list(vn, &d->ents, &d->n);
	if (rc) {
		free(d);
		return errno = -rc, NULL;
	}
	d->fd = fd;
	snprintf(d->path, sizeof(d->path), "%s", vn->path);
	pthread_mutex_lock(&dirs_lock);
	d->next = dirs;
	dirs = d;
	atomic_fetch_add(&ndirs, 1);
	pthread_mutex_unlock(&dirs_lock);
	return (DIR *)d;
}

DIR *opendir(const char *path)
{
	struct vnode vn;
	DIR *dp;
	int rc, fd;

	iopf_real_init();
	rc = lookup_at(AT_FDCWD, path, true, &vn);
	if (rc == 1)
		return REAL(opendir)(path);
	if (rc < 0)
		return errno = -rc, NULL;
	if (vn.type != VN_DIR)
		return errno = ENOTDIR, NULL;
	fd = vfs_open(&vn, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	dp = vdir_new(fd, &vn);
	if (!dp)
		close(fd);
	return dp;
}

DIR *fdopendir(int fd)
{
	struct vnode vn;
	int rc;

	iopf_real_init();
	rc = node_of_fd(fd, &vn);
	if (rc == 1)
		return REAL(fdopendir)(fd);
	if (rc < 0)
		return errno = -rc, NULL;
	if (vn.type != VN_DIR)
		return errno = ENOTDIR, NULL;
	return vdir_new(fd, &vn);
}

static struct dirent64 *vdir_next(struct vdir *d)
{
	if (d->pos >= d->n)
		return NULL; /* the end: errno untouched */
	const struct vdirent *e = &d->ents[d->pos++];
	char full[PATH_MAX];

	memset(&d->de, 0, sizeof(d->de));
	snprintf(full, sizeof(full), "%s/%s", d->path, e->name);
	d->de.d_ino = vfs_ino(full);
	d->de.d_off = (off64_t)d->pos;
	d->de.d_reclen = sizeof(d->de);
	d->de.d_type = e->type;
	snprintf(d->de.d_name, sizeof(d->de.d_name), "%s", e->name);
	return &d->de;
}

struct dirent *readdir(DIR *dp)
{
	struct vdir *d;

	iopf_real_init();
	d = vdir_of(dp);
	return d ? (struct dirent *)vdir_next(d) : REAL(readdir)(dp);
}

struct dirent64 *readdir64(DIR *dp)
{
	struct vdir *d;

	iopf_real_init();
	d = vdir_of(dp);
	return d ? vdir_next(d) : REAL(readdir64)(dp);
}

int readdir_r(DIR *restrict dp, struct dirent *restrict entry, struct dirent **restrict result)
{
	struct vdir *d;
	struct dirent64 *e;

	iopf_real_init();
	d = vdir_of(dp);
	if (!d) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
		return REAL(readdir_r)(dp, entry, result);
#pragma GCC diagnostic pop
	}
	e = vdir_next(d);
	if (e)
		memcpy(entry, e, sizeof(*entry));
	*result = e ? entry : NULL;
	return 0;
}

int readdir64_r(DIR *restrict dp, struct dirent64 *restrict entry, struct dirent64 **restrict result)
{
	struct vdir *d;
	struct dirent64 *e;

	iopf_real_init();
	d = vdir_of(dp);
	if (!d) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
		return REAL(readdir64_r)(dp, entry, result);
#pragma GCC diagnostic pop
	}
	e = vdir_next(d);
	if (e)
		memcpy(entry, e, sizeof(*entry));
	*result = e ? entry : NULL;
	return 0;
}

int closedir(DIR *dp)
{
	struct vdir *d;

	iopf_real_init();
	d = vdir_of(dp);
	if (!d)
		return REAL(closedir)(dp);
	pthread_mutex_lock(&dirs_lock);
	for (struct vdir **pp = &dirs; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			atomic_fetch_sub(&ndirs, 1);
			break;
		}
	}
	pthread_mutex_unlock(&dirs_lock);
	struct iopf_file *f = fdtab_remove(d->fd);
	if (f)
		file_put(f);
	iopf_real.close(d->fd);
	free(d->ents);
	free(d);
	return 0;
}

int dirfd(DIR *dp)
{
	struct vdir *d;

	iopf_real_init();
	d = vdir_of(dp);
	return d ? d->fd : REAL(dirfd)(dp);
}

void rewinddir(DIR *dp)
{
	struct vdir *d;

	iopf_real_init();
	d = vdir_of(dp);
	if (d)
		d->pos = 0;
	else
		REAL(rewinddir)(dp);
}

long telldir(DIR *dp)
{
	struct vdir *d;

	iopf_real_init();
	d = vdir_of(dp);
	return d ? (long)d->pos : REAL(telldir)(dp);
}

void seekdir(DIR *dp, long loc)
{
	struct vdir *d;

	iopf_real_init();
	d = vdir_of(dp);
	if (d)
		d->pos = loc < 0 ? 0 : (size_t)loc;
	else
		REAL(seekdir)(dp, loc);
}

/* --- extended attributes: sysfs and devtmpfs nodes have none (ls -l asks) ------------- */

static int xattr_none(const char *path, bool follow)
{
	struct vnode vn;
	int rc = lookup_at(AT_FDCWD, path, follow, &vn);

	return rc < 0 ? fail(-rc) : rc;
}

ssize_t getxattr(const char *path, const char *name, void *value, size_t size)
{
	iopf_real_init();
	int rc = xattr_none(path, true);
	return rc == 1 ? REAL(getxattr)(path, name, value, size) : (rc ? rc : fail(ENODATA));
}

ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)
{
	iopf_real_init();
	int rc = xattr_none(path, false);
	return rc == 1 ? REAL(lgetxattr)(path, name, value, size) : (rc ? rc : fail(ENODATA));
}

ssize_t listxattr(const char *path, char *list, size_t size)
{
	iopf_real_init();
	int rc = xattr_none(path, true);
	return rc == 1 ? REAL(listxattr)(path, list, size) : rc;
}

ssize_t llistxattr(const char *path, char *list, size_t size)
{
	iopf_real_init();
	int rc = xattr_none(path, false);
	return rc == 1 ? REAL(llistxattr)(path, list, size) : rc;
}

/* --- fopen ------------------------------------------------------------------------------------- */

/* fopen()'s mode as open() flags (libio's own parse). */
static int fopen_flags(const char *mode)
{
	int flags;

	switch (mode[0]) {
	case 'r':
		flags = O_RDONLY;
		break;
	case 'w':
		flags = O_WRONLY | O_CREAT | O_TRUNC;
		break;
	case 'a':
		flags = O_WRONLY | O_CREAT | O_APPEND;
		break;
	default:
		return -1;
	}
	for (const char *p = mode + 1; *p && *p != ','; p++) {
		if (*p == '+')
			flags = (flags & ~O_ACCMODE) | O_RDWR;
		else if (*p == 'e')
			flags |= O_CLOEXEC;
		else if (*p == 'x')
			flags |= O_EXCL;
	}
	return flags;
}

static FILE *fopen_served(const char *path, const char *mode, FILE *(*real)(const char *, const char *))
{
	int flags, fd;
	FILE *fp;

	iopf_real_init();
	if (!path || !mode || path[0] != '/' ||
	    (strncmp(path, "/dev/", 5) != 0 && strncmp(path, "/sys/", 5) != 0))
		return real(path, mode);
	flags = fopen_flags(mode);
	if (flags < 0)
		return errno = EINVAL, NULL;
	if (!iopf_open_served(AT_FDCWD, path, flags, &fd))
		return real(path, mode);
	if (fd < 0)
		return NULL;
	fp = fdopen(fd, mode);
	if (!fp) {
		int err = errno;
		close(fd);
		errno = err;
	}
	return fp;
}

/* fclose() closes without the PLT: forget the fd first. */
int fclose(FILE *fp)
{
	iopf_real_init();
	if (fp) {
		int fd = fileno(fp);
		struct iopf_file *f = fdtab_get(fd);

		if (f) {
			if (f->kind == IOPF_NODE) {
				struct iopf_file *t = fdtab_remove(fd);
				if (t)
					file_put(t);
			}
			file_put(f);
		}
	}
	return REAL(fclose)(fp);
}

FILE *fopen(const char *restrict path, const char *restrict mode)
{
	return fopen_served(path, mode, REAL(fopen));
}

FILE *fopen64(const char *restrict path, const char *restrict mode)
{
	return fopen_served(path, mode, REAL(fopen64));
}

#pragma GCC visibility pop
