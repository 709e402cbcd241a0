// SPDX-License-Identifier: MIT
/*
 * Which fds are ours. A flat table indexed by fd: a descriptor that is not ours
 * costs one atomic load on every read/write/close/ioctl of the process, so the
 * program's own I/O runs at libc speed. A file's lifetime is counted: the table
 * holds one reference, each caller working on it another.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

#define FDTAB_SIZE 65536

static _Atomic(struct iopf_file *) fdtab[FDTAB_SIZE];
static pthread_mutex_t fdtab_lock = PTHREAD_MUTEX_INITIALIZER;

struct iopf_file *file_new(enum iopf_file_kind kind, int fd)
{
	struct iopf_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->kind = kind;
	f->fd = fd;
	f->refs = 1;
	pthread_mutex_init(&f->lock, NULL);
	return f;
}

struct iopf_conn *file_conn(struct iopf_file *f)
{
	struct iopf_conn *c;

	pthread_mutex_lock(&f->lock);
	c = f->conn;
	if (c)
		conn_get(c);
	pthread_mutex_unlock(&f->lock);
	return c;
}

void file_put(struct iopf_file *f)
{
	pthread_mutex_lock(&fdtab_lock);
	int left = --f->refs;
	pthread_mutex_unlock(&fdtab_lock);
	if (left)
		return;
	pthread_mutex_destroy(&f->lock);
	free(f);
}

int fdtab_install(struct iopf_file *f)
{
	if (f->fd < 0 || f->fd >= FDTAB_SIZE)
		return -EMFILE;
	pthread_mutex_lock(&fdtab_lock);
	atomic_store(&fdtab[f->fd], f);
	pthread_mutex_unlock(&fdtab_lock);
	return 0;
}

struct iopf_file *fdtab_get(int fd)
{
	struct iopf_file *f;

	if (fd < 0 || fd >= FDTAB_SIZE)
		return NULL;
	if (!atomic_load_explicit(&fdtab[fd], memory_order_acquire))
		return NULL; /* the fast path: not ours */
	pthread_mutex_lock(&fdtab_lock);
	f = atomic_load(&fdtab[fd]);
	if (f)
		f->refs++;
	pthread_mutex_unlock(&fdtab_lock);
	return f;
}

struct iopf_file *fdtab_remove(int fd)
{
	struct iopf_file *f;

	if (fd < 0 || fd >= FDTAB_SIZE || !atomic_load(&fdtab[fd]))
		return NULL;
	pthread_mutex_lock(&fdtab_lock);
	f = atomic_exchange(&fdtab[fd], NULL);
	pthread_mutex_unlock(&fdtab_lock);
	return f;
}

bool fdtab_fault_open(struct iopf_conn *c, uint32_t fault_id)
{
	bool open = false;

	pthread_mutex_lock(&fdtab_lock);
	for (int fd = 0; fd < FDTAB_SIZE && !open; fd++) {
		struct iopf_file *f = atomic_load_explicit(&fdtab[fd], memory_order_relaxed);
		open = f && f->kind == IOPF_FAULT && f->conn == c && f->u.fault.fault_id == fault_id;
	}
	pthread_mutex_unlock(&fdtab_lock);
	return open;
}
