// SPDX-License-Identifier: MIT
/*
 * The kernel's user copies, in a process: an ioctl argument is read and written
 * with process_vm_readv/writev on ourselves, so that a bad pointer is -EFAULT, as
 * copy_from_user() makes it, instead of a crash inside the library. Where those
 * calls are not allowed (a seccomp filter), plain memcpy is the fallback.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

static atomic_int vm_copy_broken; /* process_vm_* refused: fall back to memcpy */

static int vm_copy(void *local, void *remote, size_t n, bool to_user)
{
	if (n == 0)
		return 0;
	if (!remote)
		return -EFAULT;
	if (!atomic_load_explicit(&vm_copy_broken, memory_order_relaxed)) {
		struct iovec l = { .iov_base = local, .iov_len = n };
		struct iovec r = { .iov_base = remote, .iov_len = n };
		ssize_t got = to_user ? process_vm_writev(getpid(), &l, 1, &r, 1, 0)
				      : process_vm_readv(getpid(), &l, 1, &r, 1, 0);
		if (got == (ssize_t)n)
			return 0;
		if (got >= 0 || errno == EFAULT)
			return -EFAULT;
		if (errno != ENOSYS && errno != EPERM)
			return -EFAULT;
		atomic_store(&vm_copy_broken, 1);
	}
	if (to_user)
		memcpy(remote, local, n);
	else
		memcpy(local, remote, n);
	return 0;
}

int copy_from_user(void *dst, const void *user, size_t n)
{
	return vm_copy(dst, (void *)user, n, false);
}

int copy_to_user(void *user, const void *src, size_t n)
{
	return vm_copy((void *)src, user, n, true);
}

int get_user_u32(uint32_t *dst, const void *user)
{
	return copy_from_user(dst, user, sizeof(*dst));
}

int copy_struct_from_user(void *dst, size_t ksize, const void *user, size_t usize)
{
	size_t n = usize < ksize ? usize : ksize;
	int rc;

	memset(dst, 0, ksize);
	rc = copy_from_user(dst, user, n);
	if (rc)
		return rc;
	/* The kernel accepts a larger struct only if what it does not know is zero. */
	for (size_t off = ksize; off < usize;) {
		uint8_t chunk[256];
		size_t len = usize - off < sizeof(chunk) ? usize - off : sizeof(chunk);
		rc = copy_from_user(chunk, (const uint8_t *)user + off, len);
		if (rc)
			return rc;
		for (size_t i = 0; i < len; i++)
			if (chunk[i])
				return -E2BIG;
		off += len;
	}
	return 0;
}
