// SPDX-License-Identifier: MIT
/*
 * The rest of the IOAS ioctls of drivers/iommu/iommufd/ioas.c: IOMMU_IOAS_IOVA_RANGES,
 * IOMMU_IOAS_ALLOW_IOVAS, IOMMU_IOAS_COPY, IOMMU_IOAS_MAP_FILE and IOMMU_OPTION. Each
 * checks its fields in the kernel's order, then asks the daemon (ops ioas_iova_ranges,
 * ioas_allow_iovas, ioas_copy, ioas_map_file, option: docs/uapi.md). A daemon without
 * the op answers EINVAL "unknown op", and the ioctl is ENOTTY, as on a kernel without it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../include/iopf_uapi.h"
#include "internal.h"

/* The kernel's own bound is memory; this one keeps a request inside one frame. */
#define ALLOW_IOVAS_MAX 16384

static const uint32_t map_flags =
	IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

static unsigned perm_of(uint32_t flags)
{
	return ((flags & IOMMU_IOAS_MAP_READABLE) ? IOMMU_PGFAULT_PERM_READ : 0) |
	       ((flags & IOMMU_IOAS_MAP_WRITEABLE) ? IOMMU_PGFAULT_PERM_WRITE : 0);
}

/* iommufd_get_ioas(): an IOAS of this context, else ENOENT. ctx->lock held. */
static struct iopf_obj *get_ioas(struct iopf_ctx *ctx, uint32_t id)
{
	struct iopf_obj *o = ctx_find(ctx, id);

	return o && o->kind == OBJ_IOAS ? o : NULL;
}

static int ioas_exists(struct iopf_conn *c, uint32_t id)
{
	struct iopf_ctx *ctx = conn_ctx(c);
	int rc;

	pthread_mutex_lock(&ctx->lock);
	rc = get_ioas(ctx, id) ? 0 : -ENOENT;
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* --- IOMMU_IOAS_IOVA_RANGES ------------------------------------------------------------ */

/* iommufd_ioas_iova_ranges(): every hole of the reserved ranges, as many as num_iovas
 * has room for; num_iovas returns how many there are, and the struct is copied back
 * before a too-small array is EMSGSIZE, so the caller can size its array and retry. */
int iommufd_ioas_iova_ranges(struct ucmd *u)
{
	struct iommu_ioas_iova_ranges *cmd = u->cmd;
	struct iommu_iova_range *ranges = (void *)(uintptr_t)cmd->allowed_iovas;
	const struct mp_obj *list;
	struct iopf_reply rep;
	struct mp_buf req;
	uint32_t max = cmd->num_iovas;
	int rc;

	if (cmd->__reserved)
		return -EOPNOTSUPP;
	rc = ioas_exists(u->conn, cmd->ioas_id);
	if (rc)
		return rc;
	req_start(&req, "ioas_iova_ranges", 1);
	mp_put_str(&req, "ioas_id");
	mp_put_uint(&req, cmd->ioas_id);
	rc = conn_call_pending(u->conn, &req, &rep);
	if (rc)
		return rc;
	cmd->num_iovas = 0;
	cmd->out_iova_alignment = reply_u64(&rep, "iova_alignment", NULL);
	list = mp_map_get(rep.result, "ranges");
	for (uint32_t i = 0; list && list->type == MP_ARRAY && i < list->len; i++) {
		struct iommu_iova_range elm = { 0 };

		if (!mp_get_u64(mp_map_get(&list->v.items[i], "start"), &elm.start) ||
		    !mp_get_u64(mp_map_get(&list->v.items[i], "last"), &elm.last)) {
			rc = -EIO; /* not the shape docs/uapi.md gives the op */
			break;
		}
		if (cmd->num_iovas < max &&
		    copy_to_user(&ranges[cmd->num_iovas], &elm, sizeof(elm))) {
			rc = -EFAULT;
			break;
		}
		cmd->num_iovas++;
	}
	reply_free(&rep);
	if (rc)
		return rc;
	rc = ucmd_respond(u, sizeof(*cmd));
	if (!rc && cmd->num_iovas > max)
		rc = -EMSGSIZE;
	return rc;
}

/* --- IOMMU_IOAS_ALLOW_IOVAS -------------------------------------------------------------- */

/* iommufd_ioas_allow_iovas(): each range read and checked in turn (EFAULT, EINVAL for
 * start >= last); the daemon refuses a set that overlaps a reserved range (EBUSY on the
 * wire, EADDRINUSE here)
 * and keeps it for the IOVAs it chooses. num_iovas 0 clears the set. */
int iommufd_ioas_allow_iovas(struct ucmd *u)
{
	struct iommu_ioas_allow_iovas *cmd = u->cmd;
	const struct iommu_iova_range *ranges = (const void *)(uintptr_t)cmd->allowed_iovas;
	struct mp_buf req;
	int rc;

	if (cmd->__reserved)
		return -EOPNOTSUPP;
	rc = ioas_exists(u->conn, cmd->ioas_id);
	if (rc)
		return rc;
	if (cmd->num_iovas > ALLOW_IOVAS_MAX)
		return -ENOMEM;
	req_start(&req, "ioas_allow_iovas", 2);
	mp_put_str(&req, "ioas_id");
	mp_put_uint(&req, cmd->ioas_id);
	mp_put_str(&req, "ranges");
	mp_put_array(&req, cmd->num_iovas);
	for (uint32_t i = 0; i < cmd->num_iovas; i++) {
		struct iommu_iova_range r;

		if (copy_from_user(&r, &ranges[i], sizeof(r))) {
			mp_buf_free(&req);
			return -EFAULT;
		}
		if (r.start >= r.last) {
			mp_buf_free(&req);
			return -EINVAL;
		}
		mp_put_map(&req, 2);
		mp_put_str(&req, "start");
		mp_put_uint(&req, r.start);
		mp_put_str(&req, "last");
		mp_put_uint(&req, r.last);
	}
	rc = conn_call_pending(u->conn, &req, NULL);
	/* iopt_set_allow_iova()'s EADDRINUSE travels as EBUSY (no wire errno of its own). */
	return rc == -EBUSY ? -EADDRINUSE : rc;
}

/* --- IOMMU_IOAS_COPY --------------------------------------------------------------------- */

/* iopt_get_pages(): [iova, last] must be covered by areas without a gap. */
static bool areas_cover(const struct iopf_obj *ioas, uint64_t iova, uint64_t last)
{
	uint64_t pos = iova;

	for (size_t i = 0; i < ioas->nareas; i++) {
		const struct ioas_area *a = &ioas->areas[i];
		uint64_t a_last = a->iova + a->length - 1;

		if (a->iova <= pos && pos <= a_last) {
			if (a_last >= last)
				return true;
			pos = a_last + 1;
		}
	}
	return false;
}

/* The tail COPY and MAP_FILE share: send the request, take the IOVA the daemon mapped
 * (its pick, without FIXED_IOVA), and record the area; a mapping the library cannot
 * record is undone on the daemon, so the two never disagree. */
static int map_reply(struct ucmd *u, struct mp_buf *req, struct iopf_obj *ioas,
		     uint32_t ioas_id, bool fixed, uint64_t *iova, uint64_t length)
{
	struct iopf_reply rep;
	bool present;
	int rc = conn_call_pending(u->conn, req, &rep);

	if (rc)
		return rc;
	uint64_t got = reply_u64(&rep, "iova", &present);
	reply_free(&rep);
	if (!fixed) {
		if (!present)
			return -EIO;
		*iova = got;
	}
	rc = ioas_area_insert(ioas, *iova, length);
	if (rc)
		ioas_wire_unmap(u->conn, ioas_id, *iova, length);
	return rc;
}

/* iommufd_ioas_copy(): the pages under [src_iova, +length) of one IOAS mapped again in
 * another (or the same), at a fixed IOVA or one the daemon picks. */
int iommufd_ioas_copy(struct ucmd *u)
{
	struct iommu_ioas_copy *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	bool fixed = cmd->flags & IOMMU_IOAS_MAP_FIXED_IOVA;
	struct iopf_obj *src, *dst;
	struct mp_buf req;
	uint64_t src_last, iova = cmd->dst_iova;
	int rc;

	if (cmd->flags & ~map_flags)
		return -EOPNOTSUPP;
	if (cmd->length >= UINT64_MAX || cmd->src_iova >= UINT64_MAX || cmd->dst_iova >= UINT64_MAX)
		return -EOVERFLOW;

	pthread_mutex_lock(&ctx->lock);
	src = get_ioas(ctx, cmd->src_ioas_id);
	if (!src) {
		rc = -ENOENT;
		goto out;
	}
	if (!cmd->length) {
		rc = -EINVAL;
		goto out;
	}
	if (__builtin_add_overflow(cmd->src_iova, cmd->length - 1, &src_last)) {
		rc = -EOVERFLOW;
		goto out;
	}
	if (!areas_cover(src, cmd->src_iova, src_last)) {
		rc = -ENOENT;
		goto out;
	}
	dst = get_ioas(ctx, cmd->dst_ioas_id);
	if (!dst) {
		rc = -ENOENT;
		goto out;
	}
	/* iopt_map_pages() into the destination, with IOMMU_IOAS_MAP's IOVA rules. */
	if ((cmd->length & (IOPF_PAGE_SIZE - 1)) || (cmd->src_iova & (IOPF_PAGE_SIZE - 1)) ||
	    (fixed && (iova & (IOPF_PAGE_SIZE - 1)))) {
		rc = -EINVAL;
		goto out;
	}
	if (fixed && (rc = ioas_check_iova(dst, iova, cmd->length)))
		goto out;
	req_start(&req, "ioas_copy", fixed ? 6 : 5);
	mp_put_str(&req, "src_ioas_id");
	mp_put_uint(&req, cmd->src_ioas_id);
	mp_put_str(&req, "src_iova");
	mp_put_uint(&req, cmd->src_iova);
	mp_put_str(&req, "dst_ioas_id");
	mp_put_uint(&req, cmd->dst_ioas_id);
	if (fixed) {
		mp_put_str(&req, "dst_iova");
		mp_put_uint(&req, iova);
	}
	mp_put_str(&req, "length");
	mp_put_uint(&req, cmd->length);
	mp_put_str(&req, "perm");
	mp_put_uint(&req, perm_of(cmd->flags));
	rc = map_reply(u, &req, dst, cmd->dst_ioas_id, fixed, &iova, cmd->length);
	if (rc)
		goto out;
	cmd->dst_iova = iova;
	rc = ucmd_respond(u, sizeof(*cmd));
out:
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* --- IOMMU_IOAS_MAP_FILE ----------------------------------------------------------------- */

/* iommufd_ioas_map_file(): [start, +length) of a memfd (shmem or hugetlbfs file), as QEMU
 * maps guest RAM. The daemon moves no data, so the file is checked, not read. */
int iommufd_ioas_map_file(struct ucmd *u)
{
	struct iommu_ioas_map_file *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	bool fixed = cmd->flags & IOMMU_IOAS_MAP_FIXED_IOVA;
	struct iopf_obj *ioas;
	struct mp_buf req;
	uint64_t iova = cmd->iova, end;
	int rc;

	if (cmd->flags & ~map_flags)
		return -EOPNOTSUPP;
	if (cmd->iova >= UINT64_MAX || cmd->length >= UINT64_MAX)
		return -EOVERFLOW;
	if (!(cmd->flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE)))
		return -EINVAL;

	pthread_mutex_lock(&ctx->lock);
	ioas = get_ioas(ctx, cmd->ioas_id);
	if (!ioas) {
		rc = -ENOENT;
		goto out;
	}
	if (cmd->fd < 0 || fcntl(cmd->fd, F_GETFD) < 0) { /* fget() */
		rc = -EBADF;
		goto out;
	}
	/* memfd_pin_folios() takes shmem and hugetlbfs files: those have seals. */
	if (fcntl(cmd->fd, F_GET_SEALS) < 0) {
		rc = -EINVAL;
		goto out;
	}
	if (!cmd->length) {
		rc = -EINVAL;
		goto out;
	}
	if (__builtin_add_overflow(cmd->start, cmd->length, &end)) {
		rc = -EOVERFLOW;
		goto out;
	}
	/* 4 KiB IOVAs: the file offset must be page aligned as the IOVA is. */
	if ((cmd->length & (IOPF_PAGE_SIZE - 1)) || (cmd->start & (IOPF_PAGE_SIZE - 1)) ||
	    (fixed && (iova & (IOPF_PAGE_SIZE - 1)))) {
		rc = -EINVAL;
		goto out;
	}
	if (fixed && (rc = ioas_check_iova(ioas, iova, cmd->length)))
		goto out;
	req_start(&req, "ioas_map_file", fixed ? 5 : 4);
	mp_put_str(&req, "ioas_id");
	mp_put_uint(&req, cmd->ioas_id);
	if (fixed) {
		mp_put_str(&req, "iova");
		mp_put_uint(&req, iova);
	}
	mp_put_str(&req, "start");
	mp_put_uint(&req, cmd->start);
	mp_put_str(&req, "length");
	mp_put_uint(&req, cmd->length);
	mp_put_str(&req, "perm");
	mp_put_uint(&req, perm_of(cmd->flags));
	rc = map_reply(u, &req, ioas, cmd->ioas_id, fixed, &iova, cmd->length);
	if (rc)
		goto out;
	cmd->iova = iova;
	rc = ucmd_respond(u, sizeof(*cmd));
out:
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* --- IOMMU_OPTION -------------------------------------------------------------------------- */

static bool capable_sys_resource(void)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2] = { { 0 } };

	if (syscall(SYS_capget, &hdr, data))
		return false;
	return data[CAP_SYS_RESOURCE / 32].effective & (1u << (CAP_SYS_RESOURCE % 32));
}

static int option_call(struct ucmd *u, const char *option, bool get, bool with_object)
{
	struct iommu_option *cmd = u->cmd;
	struct iopf_reply rep;
	struct mp_buf req;
	int rc;

	req_start(&req, "option", 2 + with_object + !get);
	mp_put_str(&req, "option");
	mp_put_str(&req, option);
	mp_put_str(&req, "action"); /* "op" names the request itself */
	mp_put_str(&req, get ? "get" : "set");
	if (with_object) {
		mp_put_str(&req, "object_id");
		mp_put_uint(&req, cmd->object_id);
	}
	if (!get) {
		mp_put_str(&req, "val64");
		mp_put_uint(&req, cmd->val64);
	}
	rc = conn_call_pending(u->conn, &req, &rep);
	if (rc)
		return rc;
	if (get) {
		bool present;
		cmd->val64 = reply_u64(&rep, "val64", &present);
		if (!present)
			rc = -EIO;
	}
	reply_free(&rep);
	return rc;
}

/* iommufd_option_rlimit_mode(): per context; set only with CAP_SYS_RESOURCE and while
 * the context holds no object. */
static int option_rlimit_mode(struct ucmd *u)
{
	struct iommu_option *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	bool empty;

	if (cmd->object_id)
		return -EOPNOTSUPP;
	if (cmd->op == IOMMU_OPTION_OP_GET)
		return option_call(u, "rlimit_mode", true, false);
	if (cmd->op != IOMMU_OPTION_OP_SET)
		return -EOPNOTSUPP;
	if (!capable_sys_resource())
		return -EPERM;
	pthread_mutex_lock(&ctx->lock);
	empty = !ctx->objects;
	pthread_mutex_unlock(&ctx->lock);
	if (!empty)
		return -EBUSY;
	if (cmd->val64 > 1)
		return -EINVAL;
	return option_call(u, "rlimit_mode", false, false);
}

/* iommufd_ioas_option_huge_pages(): per IOAS. */
static int option_huge_pages(struct ucmd *u)
{
	struct iommu_option *cmd = u->cmd;
	int rc = ioas_exists(u->conn, cmd->object_id);

	if (rc)
		return rc;
	if (cmd->op == IOMMU_OPTION_OP_GET)
		return option_call(u, "huge_pages", true, true);
	if (cmd->op != IOMMU_OPTION_OP_SET)
		return -EOPNOTSUPP;
	if (cmd->val64 > 1)
		return -EINVAL;
	return option_call(u, "huge_pages", false, true);
}

/* iommufd_option(): only val64 is copied back. */
int iommufd_option(struct ucmd *u)
{
	struct iommu_option *cmd = u->cmd;
	int rc;

	if (cmd->__reserved)
		return -EOPNOTSUPP;
	switch (cmd->option_id) {
	case IOMMU_OPTION_RLIMIT_MODE:
		rc = option_rlimit_mode(u);
		break;
	case IOMMU_OPTION_HUGE_PAGES:
		rc = option_huge_pages(u);
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (rc)
		return rc;
	return copy_to_user((uint8_t *)u->ubuffer + offsetof(struct iommu_option, val64),
			    &cmd->val64, sizeof(cmd->val64));
}
