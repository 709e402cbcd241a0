// SPDX-License-Identifier: MIT
/*
 * The fault fd of IOMMU_FAULT_QUEUE_ALLOC, with iommufd_fault_fops_read/_write's
 * semantics (drivers/iommu/iommufd/eventq.c):
 *  - read(): count % 40 is ESPIPE; whole groups of struct iommu_hwpt_pgfault while the
 *    next one fits; 0 when nothing is pending or the first group does not fit; never
 *    blocks.
 *  - write(): count % 8 is ESPIPE; struct iommu_hwpt_page_response entries applied in
 *    order up to the first bad one; the bytes applied, or EINVAL if the first is bad.
 *  - poll()/epoll: the fd is a SOCK_SEQPACKET socket, one packet per group, so the
 *    kernel's poll answers natively: IN while a group is unread, OUT always.
 *
 * The socket comes from the daemon (`fault_fd`: the daemon writes each group as one
 * packet). A daemon without that op still pushes `fault` events on the control
 * connection; then the library makes the socketpair itself and the connection's
 * reader writes each event into it as the same packet ("event delivery"). Answers
 * always go through `page_response`, whose `done` is the write()'s exact result.
 * $IOPF_FAULT_FD=daemon|events forces one of the two (default: daemon when it can).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../include/iopf_uapi.h"
#include "internal.h"

#define RECORD_SIZE sizeof(struct iommu_hwpt_pgfault)
#define RESPONSE_SIZE sizeof(struct iommu_hwpt_page_response)
/* Entries per page_response request: well inside max_frame. */
#define RESPONSES_PER_REQUEST 4096
/* The largest group a daemon frame can carry, bounding a read's bounce buffer. */
#define MAX_GROUP_BYTES (IOPF_MAX_FRAME / 8 * RECORD_SIZE)

struct packet {
	struct packet *next;
	size_t len;
	uint8_t data[];
};

/* Event delivery into a socketpair of our own. */
struct fault_sink {
	uint32_t fault_id;
	int wfd;                 /* our end; the program holds the other */
	pthread_mutex_t lock;    /* the backlog */
	struct packet *head, *tail; /* groups the socket had no room for yet, in order */
	struct fault_sink *next;
};

/* --- event delivery -------------------------------------------------------------------- */

static bool sink_send(struct fault_sink *s, const uint8_t *p, size_t len)
{
	ssize_t w = send(s->wfd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	/* EPIPE: the program closed its end; the group stays pending in the daemon until
	 * the fault queue goes, as on the kernel's fd. */
	return w >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS);
}

/* Moves backlogged groups into the socket while it has room (s->lock held). */
static void sink_flush(struct fault_sink *s)
{
	while (s->head && sink_send(s, s->head->data, s->head->len)) {
		struct packet *p = s->head;
		s->head = p->next;
		if (!s->head)
			s->tail = NULL;
		free(p);
	}
}

static struct packet *group_packet(const struct mp_obj *msg)
{
	const struct mp_obj *faults = mp_map_get(msg, "faults");
	uint64_t cookie = 0;
	struct packet *p;

	if (!faults || faults->type != MP_ARRAY || !faults->len ||
	    !mp_get_u64(mp_map_get(msg, "cookie"), &cookie))
		return NULL;
	p = malloc(sizeof(*p) + (size_t)faults->len * RECORD_SIZE);
	if (!p)
		return NULL;
	p->next = NULL;
	p->len = (size_t)faults->len * RECORD_SIZE;
	for (uint32_t i = 0; i < faults->len; i++) {
		const struct mp_obj *r = &faults->v.items[i];
		struct iommu_hwpt_pgfault rec = { 0 };
		uint64_t v;

#define FIELD(name)                                                     \
	do {                                                            \
		v = 0;                                                  \
		mp_get_u64(mp_map_get(r, #name), &v);                   \
		rec.name = (uint32_t)v;                                 \
	} while (0)
		FIELD(flags);
		FIELD(dev_id);
		FIELD(pasid);
		FIELD(grpid);
		FIELD(perm);
		FIELD(length);
#undef FIELD
		v = 0;
		mp_get_u64(mp_map_get(r, "addr"), &v);
		rec.addr = v;
		rec.cookie = (uint32_t)cookie; /* every record of a group carries it */
		memcpy(p->data + (size_t)i * RECORD_SIZE, &rec, RECORD_SIZE);
	}
	return p;
}

void fault_on_event(struct iopf_conn *c, const struct mp_obj *msg)
{
	struct iopf_ctx *ctx = conn_ctx(c);
	struct fault_sink *s;
	struct packet *p;
	uint64_t fault_id;

	if (!mp_str_eq(mp_map_get(msg, "event"), "fault") ||
	    !mp_get_u64(mp_map_get(msg, "fault_id"), &fault_id))
		return; /* device_request and others: nothing the kernel uAPI shows here */
	pthread_mutex_lock(&ctx->sink_lock);
	for (s = ctx->sinks; s && s->fault_id != fault_id; s = s->next)
		;
	if (s && (p = group_packet(msg))) {
		pthread_mutex_lock(&s->lock);
		if (!s->head && sink_send(s, p->data, p->len)) {
			free(p);
		} else {
			if (s->tail)
				s->tail->next = p;
			else
				s->head = p;
			s->tail = p;
		}
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&ctx->sink_lock);
}

static void sink_free(struct fault_sink *s)
{
	while (s->head) {
		struct packet *p = s->head;
		s->head = p->next;
		free(p);
	}
	iopf_real.close(s->wfd);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void fault_sinks_drop(struct iopf_ctx *ctx)
{
	pthread_mutex_lock(&ctx->sink_lock);
	while (ctx->sinks) {
		struct fault_sink *s = ctx->sinks;
		ctx->sinks = s->next;
		sink_free(s);
	}
	pthread_mutex_unlock(&ctx->sink_lock);
}

/* --- creation ----------------------------------------------------------------------------- */

static int daemon_fault_fd(struct iopf_conn *c, uint32_t fault_id)
{
	struct iopf_reply rep;
	struct mp_buf req;
	int rc, fd;

	req_start(&req, "fault_fd", 1);
	mp_put_str(&req, "fault_id");
	mp_put_uint(&req, fault_id);
	rc = conn_call_fd(c, &req, &rep, true);
	if (rc)
		return rc;
	fd = rep.fd;
	rep.fd = -1;
	reply_free(&rep);
	return fd >= 0 ? fd : -EIO;
}

static int sink_create(struct iopf_conn *c, uint32_t fault_id, struct fault_sink **out)
{
	struct iopf_ctx *ctx = conn_ctx(c);
	struct fault_sink *s;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	s = calloc(1, sizeof(*s));
	if (!s) {
		iopf_real.close(sv[0]);
		iopf_real.close(sv[1]);
		return -ENOMEM;
	}
	s->fault_id = fault_id;
	s->wfd = sv[1];
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_lock(&ctx->sink_lock);
	s->next = ctx->sinks;
	ctx->sinks = s;
	pthread_mutex_unlock(&ctx->sink_lock);
	*out = s;
	return sv[0];
}

static void sink_remove(struct iopf_conn *c, struct fault_sink *s)
{
	struct iopf_ctx *ctx = conn_ctx(c);

	pthread_mutex_lock(&ctx->sink_lock);
	for (struct fault_sink **pp = &ctx->sinks; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	pthread_mutex_unlock(&ctx->sink_lock);
	sink_free(s);
}

int fault_fd_create(struct iopf_conn *c, uint32_t fault_id)
{
	struct iopf_ctx *ctx = conn_ctx(c);
	const char *mode = getenv("IOPF_FAULT_FD");
	bool events = mode && strcmp(mode, "events") == 0;
	bool daemon_only = mode && strcmp(mode, "daemon") == 0;
	struct fault_sink *sink = NULL;
	struct iopf_file *f;
	int fd = -1, rc;

	if (!events && ctx->fault_fd_op != 0) {
		fd = daemon_fault_fd(c, fault_id);
		if (fd >= 0) {
			ctx->fault_fd_op = 1;
		} else if (daemon_only || fd != -EINVAL || ctx->fault_fd_op == 1) {
			return fd;
		} else {
			/* EINVAL for a queue we just made: a daemon without the op. */
			iopf_debug("iopf: the daemon has no fault_fd op; delivering events\n");
			ctx->fault_fd_op = 0;
		}
	}
	if (fd < 0) {
		fd = sink_create(c, fault_id, &sink);
		if (fd < 0)
			return fd;
	}
	f = file_new(IOPF_FAULT, fd);
	if (!f) {
		rc = -ENOMEM;
		goto fail;
	}
	f->conn = c;
	f->u.fault.fault_id = fault_id;
	f->u.fault.sink = sink;
	rc = fdtab_install(f);
	if (rc) {
		file_put(f);
		goto fail;
	}
	conn_get(c);
	return fd;
fail:
	if (sink)
		sink_remove(c, sink);
	iopf_real.close(fd);
	return rc;
}

void fault_release(struct iopf_file *f)
{
	struct iopf_conn *c;

	/* After a read() or write() still running on the fd (they hold f->lock). */
	pthread_mutex_lock(&f->lock);
	c = f->conn;
	if (f->u.fault.sink)
		sink_remove(c, f->u.fault.sink);
	f->u.fault.sink = NULL;
	f->conn = NULL;
	pthread_mutex_unlock(&f->lock);
	conn_put(c);
}

/* --- read -------------------------------------------------------------------------------- */

ssize_t fault_read(struct iopf_file *f, void *buf, size_t count)
{
	_Static_assert(RECORD_SIZE == 40, "struct iommu_hwpt_pgfault");
	uint8_t small[4096];
	size_t done = 0;
	ssize_t rc = 0;

	if (count % RECORD_SIZE)
		return -ESPIPE;
	pthread_mutex_lock(&f->lock);
	if (!f->conn) /* closed while we waited for the lock */
		rc = -EBADF, count = 0;
	/* Per group: one peek (its size and, when it fits in small, its records), the copy
	 * out, and a zero-length recv that drops the packet (a SOCK_SEQPACKET read takes
	 * the whole packet whatever its length). A group smaller than one record does
	 * not exist, so a buffer with no room for one more ends the read unpeeked. */
	while (count - done >= RECORD_SIZE) {
		struct fault_sink *s = f->u.fault.sink;
		uint8_t *bounce = small;
		if (s) {
			pthread_mutex_lock(&s->lock);
			sink_flush(s);
			pthread_mutex_unlock(&s->lock);
		}
		/* The next group, without taking it. */
		ssize_t n = recv(f->fd, small, sizeof(small), MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || (size_t)n > count - done || (size_t)n > MAX_GROUP_BYTES)
			break; /* nothing pending, or the group does not fit: it stays queued */
		ssize_t got = n;
		if ((size_t)n > sizeof(small)) {
			bounce = malloc((size_t)n);
			if (!bounce) {
				rc = -ENOMEM;
				break;
			}
			got = recv(f->fd, bounce, (size_t)n, MSG_PEEK | MSG_DONTWAIT);
		}
		/* Copy before consuming, so that a bad buffer leaves the group queued, as the
		 * kernel's fetch/restore does. */
		if (got == n && copy_to_user((uint8_t *)buf + done, bounce, (size_t)n))
			rc = -EFAULT;
		else if (got == n && recv(f->fd, NULL, 0, MSG_TRUNC | MSG_DONTWAIT) != n)
			rc = -EIO;
		if (bounce != small)
			free(bounce);
		if (got != n || rc)
			break;
		done += (size_t)n;
	}
	pthread_mutex_unlock(&f->lock);
	return done ? (ssize_t)done : rc;
}

/* --- write ------------------------------------------------------------------------------- */

/* One page_response of @n entries: the number applied, or -errno. */
static ssize_t respond(struct iopf_file *f, const struct iommu_hwpt_page_response *r, size_t n)
{
	struct iopf_reply rep;
	struct mp_buf req;
	int rc;

	req_start(&req, "page_response", 2);
	mp_put_str(&req, "fault_id");
	mp_put_uint(&req, f->u.fault.fault_id);
	mp_put_str(&req, "responses");
	mp_put_array(&req, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		mp_put_map(&req, 2);
		mp_put_str(&req, "cookie");
		mp_put_uint(&req, r[i].cookie);
		mp_put_str(&req, "code");
		mp_put_uint(&req, r[i].code);
	}
	rc = conn_call(f->conn, &req, &rep);
	if (rc)
		return rc;
	uint64_t done = reply_u64(&rep, "done", NULL);
	reply_free(&rep);
	return (ssize_t)(done < n ? done : n);
}

ssize_t fault_write(struct iopf_file *f, const void *buf, size_t count)
{
	_Static_assert(RESPONSE_SIZE == 8, "struct iommu_hwpt_page_response");
	struct iommu_hwpt_page_response *r;
	size_t total = count / RESPONSE_SIZE, done = 0;
	ssize_t rc = 0;

	if (count % RESPONSE_SIZE)
		return -ESPIPE;
	if (!total)
		return 0;
	r = malloc(RESPONSES_PER_REQUEST * RESPONSE_SIZE);
	if (!r)
		return -ENOMEM;
	pthread_mutex_lock(&f->lock);
	if (!f->conn) /* closed while we waited for the lock */
		rc = -EBADF, total = 0;
	while (done < total) {
		size_t n = total - done < RESPONSES_PER_REQUEST ? total - done : RESPONSES_PER_REQUEST;
		const uint8_t *from = (const uint8_t *)buf + done * RESPONSE_SIZE;
		size_t got = 0;
		/* The kernel copies entry by entry and a fault ends the batch there: the whole
		 * chunk in one copy, entry by entry only to find where it faults. */
		if (!copy_from_user(r, from, n * RESPONSE_SIZE))
			got = n;
		else
			while (got < n &&
			       !copy_from_user(&r[got], from + got * RESPONSE_SIZE, RESPONSE_SIZE))
				got++;
		if (!got) {
			rc = -EFAULT;
			break;
		}
		rc = respond(f, r, got);
		if (rc < 0)
			break;
		done += (size_t)rc;
		if ((size_t)rc < got || got < n)
			break; /* stopped at a bad entry (or an unreadable one) */
	}
	pthread_mutex_unlock(&f->lock);
	free(r);
	return done ? (ssize_t)(done * RESPONSE_SIZE) : rc;
}
