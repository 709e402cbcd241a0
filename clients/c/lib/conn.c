// SPDX-License-Identifier: MIT
/*
 * One daemon connection per iommufd context (an open /dev/iommu and what hangs on
 * it: bound devices, fault fds), as iommufd has one ictx per open file. Frames are a
 * 4-byte big-endian length and one msgpack map (PROTOCOL.md, "Transport and
 * framing"). A reader thread matches replies to waiting callers by request id, so one
 * thread may wait in `dma` while others run ioctls on the same connection, and hands
 * events to the fault fd code. Each caller waits on a semaphore of its own and the
 * reader posts only the caller a reply is for, after dropping the lock: with
 * hundreds of threads in iopf_dma(), a shared condition variable woke all of them for
 * every reply (the fault loop's IOMMU_IOAS_MAP and page responses included), and a
 * wake-up under the lock made the woken caller block on it once more. fds passed with a reply (SCM_RIGHTS, `fault_fd`) are
 * queued in arrival order and given to the reply that wants one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

#define CONN_MAX_FDS 16

struct waiter {
	uint32_t id;
	bool done;
	bool want_fd;
	bool unknown_op; /* the daemon's EINVAL "unknown op": it has no such op */
	int err;
	struct iopf_reply rep;
	sem_t posted; /* by the reader: once the reply is in, or when the connection dies */
	struct waiter *next;
};

struct iopf_conn {
	int sock;
	atomic_int refs;
	pthread_t reader;
	pthread_mutex_t lock; /* waiters, dead, fds */
	pthread_mutex_t send_lock;
	uint32_t next_id;
	struct waiter *waiters;
	bool dead;
	int fds[CONN_MAX_FDS];
	int nfds;
	struct iopf_ctx ctx;
};

struct iopf_ctx *conn_ctx(struct iopf_conn *c)
{
	return &c->ctx;
}

/* --- errno names ---------------------------------------------------------------- */

static const struct {
	const char *name;
	int value;
} errno_names[] = {
	{ "EINVAL", EINVAL }, { "ENOENT", ENOENT }, { "EBUSY", EBUSY }, { "EPERM", EPERM },
	{ "EOPNOTSUPP", EOPNOTSUPP }, { "ENODEV", ENODEV }, { "ENOSPC", ENOSPC },
	{ "EPROTO", EPROTO }, { "EPROTONOSUPPORT", EPROTONOSUPPORT }, { "E2BIG", E2BIG },
	{ "EEXIST", EEXIST }, { "EFAULT", EFAULT }, { "ENOMEM", ENOMEM },
	{ "EOVERFLOW", EOVERFLOW }, { "ENOTTY", ENOTTY }, { "ESPIPE", ESPIPE },
	{ "EAGAIN", EAGAIN }, { "EBADF", EBADF }, { "EBADFD", EBADFD }, { "EIO", EIO },
	{ "ENXIO", ENXIO }, { "EMSGSIZE", EMSGSIZE }, { "ERANGE", ERANGE },
	{ "EADDRINUSE", EADDRINUSE }, { "ETIMEDOUT", ETIMEDOUT },
};

int errno_from_name(const struct mp_obj *name)
{
	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
		if (mp_str_eq(name, errno_names[i].name))
			return errno_names[i].value;
	return EIO;
}

/* --- requests ------------------------------------------------------------------- */

void req_start(struct mp_buf *b, const char *op, uint32_t nargs)
{
	static const uint8_t room[4];

	mp_buf_init(b);
	mp_put_raw(b, room, sizeof(room)); /* the frame length, filled in by conn_call */
	mp_put_map(b, nargs + 2);
	mp_put_str(b, "op");
	mp_put_str(b, op);
}

void reply_free(struct iopf_reply *rep)
{
	mp_doc_free(&rep->doc);
	free(rep->frame);
	if (rep->fd >= 0)
		iopf_real.close(rep->fd);
	memset(rep, 0, sizeof(*rep));
	rep->fd = -1;
}

uint64_t reply_u64(const struct iopf_reply *rep, const char *key, bool *present)
{
	uint64_t v = 0;
	bool ok = mp_get_u64(mp_map_get(rep->result, key), &v);

	if (present)
		*present = ok;
	return ok ? v : 0;
}

static int send_all(int sock, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = send(sock, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int conn_call(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep)
{
	return conn_call_fd(c, req, rep, false);
}

static int call(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep, bool want_fd,
		bool *unknown_op);

int conn_call_fd(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep, bool want_fd)
{
	return call(c, req, rep, want_fd, NULL);
}

int conn_call_pending(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep)
{
	bool unknown = false;
	int rc = call(c, req, rep, false, &unknown);

	return rc == -EINVAL && unknown ? -ENOTTY : rc;
}

static int call(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep, bool want_fd,
		bool *unknown_op)
{
	struct waiter w = { .err = 0 };
	int rc;

	w.rep.fd = -1;
	pthread_mutex_lock(&c->lock);
	if (c->dead) {
		pthread_mutex_unlock(&c->lock);
		mp_buf_free(req);
		return -EIO;
	}
	sem_init(&w.posted, 0, 0);
	w.id = c->next_id++;
	if (c->next_id == 0)
		c->next_id = 1;
	w.want_fd = want_fd;
	w.next = c->waiters;
	c->waiters = &w;
	pthread_mutex_unlock(&c->lock);

	mp_put_str(req, "id");
	mp_put_uint(req, w.id);
	if (req->oom) {
		rc = -ENOMEM;
	} else {
		uint32_t len = (uint32_t)(req->len - 4);
		req->data[0] = (uint8_t)(len >> 24);
		req->data[1] = (uint8_t)(len >> 16);
		req->data[2] = (uint8_t)(len >> 8);
		req->data[3] = (uint8_t)len;
		pthread_mutex_lock(&c->send_lock);
		rc = send_all(c->sock, req->data, req->len);
		pthread_mutex_unlock(&c->send_lock);
	}
	mp_buf_free(req);

	if (!rc)
		while (sem_wait(&w.posted) && errno == EINTR)
			;
	/* A reply: the reader wrote w before it posted and touches it no more (glibc's
	 * sem_post lets the waiter destroy the semaphore once sem_wait returned). Otherwise
	 * (the connection died, or our send failed) we are still listed, unless a reply
	 * came all the same, whose post we then wait for. */
	if (rc || !w.done) {
		pthread_mutex_lock(&c->lock);
		bool answered = w.done;
		if (!answered) {
			for (struct waiter **pp = &c->waiters; *pp; pp = &(*pp)->next) {
				if (*pp == &w) {
					*pp = w.next;
					break;
				}
			}
			if (!rc)
				rc = -EIO;
		}
		pthread_mutex_unlock(&c->lock);
		if (answered && rc)
			while (sem_wait(&w.posted) && errno == EINTR)
				;
	}
	if (w.done) {
		rc = w.err;
		if (unknown_op)
			*unknown_op = w.unknown_op;
	}
	sem_destroy(&w.posted);

	if (rc || !rep) {
		if (w.done)
			reply_free(&w.rep);
		return rc;
	}
	*rep = w.rep;
	return 0;
}

/* --- the reader thread ---------------------------------------------------------- */

static void close_fds(const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		iopf_real.close(fds[i]);
}

/* One complete frame; takes ownership of @frame. Returns false on a protocol error. */
static bool handle_frame(struct iopf_conn *c, uint8_t *frame, size_t len)
{
	struct mp_doc doc;
	const struct mp_obj *root, *id_obj;
	uint64_t id;

	if (mp_decode(frame, len, &doc) || mp_root(&doc)->type != MP_MAP) {
		mp_doc_free(&doc);
		free(frame);
		return false;
	}
	root = mp_root(&doc);
	if (mp_map_get(root, "event")) {
		fault_on_event(c, root);
		mp_doc_free(&doc);
		free(frame);
		return true;
	}
	id_obj = mp_map_get(root, "id");
	if (!mp_get_u64(id_obj, &id)) { /* {"id": null}: the daemon is closing us (EPROTO) */
		iopf_debug("iopf: daemon error without a request id; closing the connection\n");
		mp_doc_free(&doc);
		free(frame);
		return false;
	}

	pthread_mutex_lock(&c->lock);
	struct waiter *w, **pp;
	for (pp = &c->waiters; *pp && (*pp)->id != id; pp = &(*pp)->next)
		;
	w = *pp;
	if (!w) { /* a reply nobody waits for: nothing to do with it */
		pthread_mutex_unlock(&c->lock);
		mp_doc_free(&doc);
		free(frame);
		return true;
	}
	*pp = w->next;
	bool ok = false;
	mp_get_bool(mp_map_get(root, "ok"), &ok);
	w->rep.frame = frame;
	w->rep.doc = doc;
	w->rep.fd = -1;
	if (ok) {
		w->err = 0;
		w->rep.result = mp_map_get(root, "result");
		if (w->want_fd && c->nfds > 0) {
			w->rep.fd = c->fds[0];
			memmove(c->fds, c->fds + 1, sizeof(int) * (size_t)--c->nfds);
		}
	} else {
		const struct mp_obj *err = mp_map_get(root, "error");
		w->err = -errno_from_name(mp_map_get(err, "code"));
		const struct mp_obj *m = mp_map_get(err, "message");
		w->unknown_op = w->err == -EINVAL && m && m->type == MP_STR && m->len >= 10 &&
				memcmp(m->v.s, "unknown op", 10) == 0;
		if (getenv("IOPF_DEBUG")) {
			char code[32] = "?", msg[256] = "";
			mp_get_str(mp_map_get(err, "code"), code, sizeof(code));
			mp_get_str(mp_map_get(err, "message"), msg, sizeof(msg));
			iopf_debug("iopf: request %llu: %s: %s\n", (unsigned long long)id, code, msg);
		}
	}
	w->done = true;
	pthread_mutex_unlock(&c->lock);
	/* Unlisted, so nobody else posts it; the caller waits for this before it returns. */
	sem_post(&w->posted);
	return true;
}

static void collect_fds(struct iopf_conn *c, struct msghdr *msg)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		int fds[CONN_MAX_FDS];
		if (n > CONN_MAX_FDS)
			n = CONN_MAX_FDS;
		memcpy(fds, CMSG_DATA(cm), sizeof(int) * (size_t)n);
		pthread_mutex_lock(&c->lock);
		for (int i = 0; i < n; i++) {
			if (c->nfds < CONN_MAX_FDS)
				c->fds[c->nfds++] = fds[i];
			else
				iopf_real.close(fds[i]);
		}
		pthread_mutex_unlock(&c->lock);
	}
}

static void *reader_main(void *arg)
{
	struct iopf_conn *c = arg;
	size_t cap = 64 * 1024, len = 0;
	uint8_t *buf = malloc(cap);
	union {
		char space[CMSG_SPACE(sizeof(int) * CONN_MAX_FDS)];
		struct cmsghdr align;
	} cbuf;

	while (buf) {
		struct iovec iov = { .iov_base = buf + len, .iov_len = cap - len };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
				      .msg_control = cbuf.space, .msg_controllen = sizeof(cbuf.space) };
		ssize_t n = recvmsg(c->sock, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		collect_fds(c, &msg);
		len += (size_t)n;

		bool bad = false;
		while (len >= 4 && !bad) {
			uint32_t flen = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
					(uint32_t)buf[2] << 8 | buf[3];
			if (flen == 0 || flen > IOPF_MAX_FRAME) {
				bad = true;
				break;
			}
			if (len < 4 + (size_t)flen) {
				if (cap < 4 + (size_t)flen) {
					uint8_t *nb = realloc(buf, 4 + (size_t)flen);
					if (!nb) {
						bad = true;
						break;
					}
					buf = nb;
					cap = 4 + (size_t)flen;
				}
				break;
			}
			uint8_t *frame = malloc(flen);
			if (!frame) {
				bad = true;
				break;
			}
			memcpy(frame, buf + 4, flen);
			len -= 4 + (size_t)flen;
			memmove(buf, buf + 4 + flen, len);
			bad = !handle_frame(c, frame, flen);
		}
		if (bad)
			break;
	}
	free(buf);

	pthread_mutex_lock(&c->lock);
	c->dead = true;
	for (struct waiter *w = c->waiters; w; w = w->next)
		sem_post(&w->posted); /* under the lock: each unlinks itself under it first */
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* --- lifetime ------------------------------------------------------------------- */

static int connect_daemon(void)
{
	const char *path = getenv("IOPFD_SOCKET");
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int sock;

	if (!path || !*path)
		path = IOPF_DEFAULT_SOCKET;
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int err = errno;
		iopf_debug("iopf: cannot reach iopfd at %s: %s\n", path, strerror(err));
		iopf_real.close(sock);
		return -err;
	}
	return sock;
}

int conn_open(struct iopf_conn **out)
{
	struct iopf_conn *c;
	struct mp_buf req;
	struct iopf_reply rep;
	sigset_t all, old;
	char client[96];
	int rc, sock = connect_daemon();

	if (sock < 0)
		return sock;
	c = calloc(1, sizeof(*c));
	if (!c) {
		iopf_real.close(sock);
		return -ENOMEM;
	}
	c->sock = sock;
	atomic_init(&c->refs, 1);
	c->next_id = 1;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->send_lock, NULL);
	ctx_init(&c->ctx);

	/* The reader takes no signal of the program's. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = -pthread_create(&c->reader, NULL, reader_main, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		iopf_real.close(sock);
		ctx_destroy(&c->ctx);
		free(c);
		return rc;
	}

	snprintf(client, sizeof(client), "libiopf-preload:%s", program_invocation_short_name);
	req_start(&req, "hello", 2);
	mp_put_str(&req, "version");
	mp_put_uint(&req, IOPF_WIRE_VERSION);
	mp_put_str(&req, "client");
	mp_put_str(&req, client);
	rc = conn_call(c, &req, &rep);
	if (!rc) {
		uint64_t version = reply_u64(&rep, "version", NULL);
		reply_free(&rep);
		if (version != IOPF_WIRE_VERSION)
			rc = -EPROTONOSUPPORT;
	}
	if (rc) {
		iopf_debug("iopf: hello failed: %s\n", strerror(-rc));
		conn_put(c);
		return rc;
	}
	*out = c;
	return 0;
}

void conn_get(struct iopf_conn *c)
{
	atomic_fetch_add(&c->refs, 1);
}

void conn_put(struct iopf_conn *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	/* The daemon releases everything this context owned when it sees us go. */
	shutdown(c->sock, SHUT_RDWR);
	pthread_join(c->reader, NULL);
	iopf_real.close(c->sock);
	close_fds(c->fds, c->nfds);
	fault_sinks_drop(&c->ctx);
	ctx_destroy(&c->ctx);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->send_lock);
	free(c);
}
