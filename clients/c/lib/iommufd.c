// SPDX-License-Identifier: MIT
/*
 * /dev/iommu: the ioctls of drivers/iommu/iommufd/main.c, served over the daemon
 * connection of this open file. The dispatcher follows iommufd_fops_ioctl(): an
 * unknown number is ENOTTY; the leading u32 `size` below the op's minimum (the end of
 * its last original field) is EINVAL; a larger struct must be zero beyond what is
 * known (E2BIG); the reply copies min(size, sizeof) bytes back (iommufd_ucmd_respond).
 * Each handler checks its fields in the kernel's order before it asks the daemon.
 * HWPT_ALLOC and HWPT_INVALIDATE are in hw_pagetable.c, IOAS_MAP/UNMAP in ioas.c,
 * IOAS_IOVA_RANGES, _ALLOW_IOVAS, _COPY, _MAP_FILE and OPTION in ioas_ext.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../include/iopf_uapi.h"
#include "internal.h"

/* iommufd_ucmd_respond(): the whole struct back, as far as the caller's size reaches. */
int ucmd_respond(struct ucmd *u, size_t cmd_len)
{
	return copy_to_user(u->ubuffer, u->cmd, u->user_size < cmd_len ? u->user_size : cmd_len);
}

/* --- the context's object table ----------------------------------------------------- */

void ctx_init(struct iopf_ctx *ctx)
{
	memset(ctx, 0, sizeof(*ctx));
	pthread_mutex_init(&ctx->lock, NULL);
	pthread_mutex_init(&ctx->sink_lock, NULL);
	ctx->fault_fd_op = -1;
}

void ctx_destroy(struct iopf_ctx *ctx)
{
	while (ctx->objects)
		ctx_del(ctx, ctx->objects->id);
	pthread_mutex_destroy(&ctx->lock);
	pthread_mutex_destroy(&ctx->sink_lock);
}

struct iopf_obj *ctx_find(struct iopf_ctx *ctx, uint32_t id)
{
	struct iopf_obj *o;

	for (o = ctx->objects; o && o->id != id; o = o->next)
		;
	return o;
}

struct iopf_obj *ctx_add(struct iopf_ctx *ctx, uint32_t id, enum iopf_obj_kind kind)
{
	struct iopf_obj *o = ctx_find(ctx, id);

	if (o)
		return o;
	o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->id = id;
	o->kind = kind;
	o->next = ctx->objects;
	ctx->objects = o;
	return o;
}

void ctx_del(struct iopf_ctx *ctx, uint32_t id)
{
	for (struct iopf_obj **pp = &ctx->objects; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct iopf_obj *o = *pp;
			*pp = o->next;
			free(o->areas);
			free(o);
			return;
		}
	}
}

/* --- IOMMU_DESTROY ------------------------------------------------------------------ */

int destroy_obj(struct iopf_conn *c, uint32_t id)
{
	struct mp_buf req;

	req_start(&req, "destroy", 1);
	mp_put_str(&req, "obj_id");
	mp_put_uint(&req, id);
	return conn_call(c, &req, NULL);
}

static int iommufd_destroy(struct ucmd *u)
{
	struct iommu_destroy *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	struct iopf_obj *o;
	int rc;

	pthread_mutex_lock(&ctx->lock);
	o = ctx_find(ctx, cmd->id);
	/* The fault fd holds its FAULT object (eventq's users reference). */
	if (o && o->kind == OBJ_FAULT && fdtab_fault_open(u->conn, cmd->id)) {
		rc = -EBUSY;
	} else {
		rc = destroy_obj(u->conn, cmd->id);
		if (!rc)
			ctx_del(ctx, cmd->id);
	}
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* --- IOMMU_IOAS_ALLOC ---------------------------------------------------------------- */

static int iommufd_ioas_alloc(struct ucmd *u)
{
	struct iommu_ioas_alloc *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	struct iopf_reply rep;
	struct mp_buf req;
	int rc;

	if (cmd->flags)
		return -EOPNOTSUPP;
	req_start(&req, "ioas_alloc", 0);
	rc = conn_call(u->conn, &req, &rep);
	if (rc)
		return rc;
	cmd->out_ioas_id = (uint32_t)reply_u64(&rep, "ioas_id", NULL);
	reply_free(&rep);
	rc = ucmd_respond(u, sizeof(*cmd));
	pthread_mutex_lock(&ctx->lock);
	if (rc)
		destroy_obj(u->conn, cmd->out_ioas_id);
	else if (!ctx_add(ctx, cmd->out_ioas_id, OBJ_IOAS))
		rc = -ENOMEM;
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* --- IOMMU_FAULT_QUEUE_ALLOC ---------------------------------------------------------- */

static int iommufd_fault_alloc(struct ucmd *u)
{
	struct iommu_fault_alloc *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	struct iopf_reply rep;
	struct mp_buf req;
	int rc, fd;

	if (cmd->flags)
		return -EOPNOTSUPP;
	req_start(&req, "fault_alloc", 0);
	rc = conn_call(u->conn, &req, &rep);
	if (rc)
		return rc;
	cmd->out_fault_id = (uint32_t)reply_u64(&rep, "fault_id", NULL);
	reply_free(&rep);

	pthread_mutex_lock(&ctx->lock);
	fd = fault_fd_create(u->conn, cmd->out_fault_id);
	if (fd < 0) {
		destroy_obj(u->conn, cmd->out_fault_id);
		pthread_mutex_unlock(&ctx->lock);
		return fd;
	}
	cmd->out_fault_fd = (uint32_t)fd;
	rc = ucmd_respond(u, sizeof(*cmd));
	if (!rc && !ctx_add(ctx, cmd->out_fault_id, OBJ_FAULT))
		rc = -ENOMEM;
	pthread_mutex_unlock(&ctx->lock);
	if (rc) { /* iommufd_fault_alloc(): the fd is never installed */
		close(fd);
		pthread_mutex_lock(&ctx->lock);
		destroy_obj(u->conn, cmd->out_fault_id);
		ctx_del(ctx, cmd->out_fault_id);
		pthread_mutex_unlock(&ctx->lock);
	}
	return rc;
}

/* --- IOMMU_GET_HW_INFO ------------------------------------------------------------------ */

static int clear_user(uint8_t *user, size_t n)
{
	static const uint8_t zeros[256];

	while (n) {
		size_t len = n < sizeof(zeros) ? n : sizeof(zeros);
		if (copy_to_user(user, zeros, len))
			return -EFAULT;
		user += len;
		n -= len;
	}
	return 0;
}

static int iommufd_get_hw_info(struct ucmd *u)
{
	struct iommu_hw_info *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	struct iommu_hw_info_vtd vtd = { 0 };
	struct iopf_reply rep;
	struct iopf_obj *o;
	struct mp_buf req;
	unsigned pasid_bits;
	uint32_t copy_len;
	int rc;

	if (cmd->flags & ~IOMMU_HW_INFO_FLAG_INPUT_TYPE)
		return -EOPNOTSUPP;
	if (cmd->__reserved[0] || cmd->__reserved[1] || cmd->__reserved[2])
		return -EOPNOTSUPP;
	if (!(cmd->flags & IOMMU_HW_INFO_FLAG_INPUT_TYPE))
		cmd->in_data_type = IOMMU_HW_INFO_TYPE_DEFAULT;

	pthread_mutex_lock(&ctx->lock);
	o = ctx_find(ctx, cmd->dev_id);
	pasid_bits = o ? o->pasid_bits : 0;
	rc = o && o->kind == OBJ_DEVICE ? 0 : -ENOENT;
	pthread_mutex_unlock(&ctx->lock);
	if (rc)
		return rc;
	/* intel_iommu_hw_info(): only its own type, or the default. */
	if (cmd->in_data_type != IOMMU_HW_INFO_TYPE_DEFAULT &&
	    cmd->in_data_type != IOMMU_HW_INFO_TYPE_INTEL_VTD)
		return -EOPNOTSUPP;

	req_start(&req, "hw_info", 1);
	mp_put_str(&req, "dev_id");
	mp_put_uint(&req, cmd->dev_id);
	rc = conn_call(u->conn, &req, &rep);
	if (rc)
		return rc;
	vtd.flags = (uint32_t)reply_u64(&rep, "flags", NULL);
	vtd.cap_reg = reply_u64(&rep, "cap_reg", NULL);
	vtd.ecap_reg = reply_u64(&rep, "ecap_reg", NULL);
	reply_free(&rep);

	copy_len = cmd->data_len < sizeof(vtd) ? cmd->data_len : (uint32_t)sizeof(vtd);
	if (copy_to_user((void *)(uintptr_t)cmd->data_uptr, &vtd, copy_len))
		return -EFAULT;
	/* Zero the trailing bytes of a user buffer larger than the data. */
	if (copy_len < cmd->data_len &&
	    clear_user((uint8_t *)(uintptr_t)cmd->data_uptr + copy_len, cmd->data_len - copy_len))
		return -EFAULT;
	cmd->data_len = sizeof(vtd);
	cmd->out_data_type = IOMMU_HW_INFO_TYPE_INTEL_VTD;
	cmd->out_capabilities = 0; /* no dirty tracking; PASID EXEC/PRIV not enabled */
	cmd->out_max_pasid_log2 = (uint8_t)pasid_bits;
	return ucmd_respond(u, sizeof(*cmd));
}

/* --- the dispatcher ---------------------------------------------------------------------- */

/* IOMMU_IOAS_MAP and _UNMAP live in ioas.c with the areas they keep. */
static int iommufd_ioas_map(struct ucmd *u)
{
	int rc = ioas_map(u->conn, u->cmd);

	return rc ? rc : ucmd_respond(u, sizeof(struct iommu_ioas_map));
}

static int iommufd_ioas_unmap(struct ucmd *u)
{
	int rc = ioas_unmap(u->conn, u->cmd);

	return rc ? rc : ucmd_respond(u, sizeof(struct iommu_ioas_unmap));
}

#define IOCTL_OP(_ioctl, _fn, _struct, _last)                                   \
	{ .cmd = _ioctl, .size = sizeof(struct _struct),                        \
	  .min_size = offsetof(struct _struct, _last) +                         \
		      sizeof(((struct _struct *)0)->_last),                     \
	  .fn = _fn }

static const struct {
	unsigned long cmd;
	size_t size;
	size_t min_size;
	int (*fn)(struct ucmd *u);
} iommufd_ops[] = {
	IOCTL_OP(IOMMU_DESTROY, iommufd_destroy, iommu_destroy, id),
	IOCTL_OP(IOMMU_FAULT_QUEUE_ALLOC, iommufd_fault_alloc, iommu_fault_alloc, out_fault_fd),
	IOCTL_OP(IOMMU_GET_HW_INFO, iommufd_get_hw_info, iommu_hw_info, __reserved),
	IOCTL_OP(IOMMU_HWPT_ALLOC, iommufd_hwpt_alloc, iommu_hwpt_alloc, __reserved),
	IOCTL_OP(IOMMU_HWPT_INVALIDATE, iommufd_hwpt_invalidate, iommu_hwpt_invalidate, __reserved),
	IOCTL_OP(IOMMU_IOAS_ALLOC, iommufd_ioas_alloc, iommu_ioas_alloc, out_ioas_id),
	IOCTL_OP(IOMMU_IOAS_MAP, iommufd_ioas_map, iommu_ioas_map, iova),
	IOCTL_OP(IOMMU_IOAS_UNMAP, iommufd_ioas_unmap, iommu_ioas_unmap, length),
	IOCTL_OP(IOMMU_IOAS_IOVA_RANGES, iommufd_ioas_iova_ranges, iommu_ioas_iova_ranges,
		 out_iova_alignment),
	IOCTL_OP(IOMMU_IOAS_ALLOW_IOVAS, iommufd_ioas_allow_iovas, iommu_ioas_allow_iovas,
		 allowed_iovas),
	IOCTL_OP(IOMMU_IOAS_COPY, iommufd_ioas_copy, iommu_ioas_copy, src_iova),
	IOCTL_OP(IOMMU_IOAS_MAP_FILE, iommufd_ioas_map_file, iommu_ioas_map_file, iova),
	IOCTL_OP(IOMMU_OPTION, iommufd_option, iommu_option, val64),
};

long iommufd_ioctl(struct iopf_file *f, unsigned long cmd, void *arg)
{
	union {
		struct iommu_destroy destroy;
		struct iommu_fault_alloc fault;
		struct iommu_hw_info info;
		struct iommu_hwpt_alloc hwpt;
		struct iommu_hwpt_invalidate cache;
		struct iommu_ioas_alloc alloc;
		struct iommu_ioas_map map;
		struct iommu_ioas_unmap unmap;
		struct iommu_ioas_iova_ranges ranges;
		struct iommu_ioas_allow_iovas allow;
		struct iommu_ioas_copy copy;
		struct iommu_ioas_map_file map_file;
		struct iommu_option option;
	} buf;
	struct ucmd u = { .ubuffer = arg, .cmd = &buf };
	size_t i;
	int rc;

	for (i = 0; i < sizeof(iommufd_ops) / sizeof(iommufd_ops[0]); i++)
		if (iommufd_ops[i].cmd == cmd)
			break;
	if (i == sizeof(iommufd_ops) / sizeof(iommufd_ops[0]))
		return -ENOTTY;
	rc = get_user_u32(&u.user_size, arg);
	if (rc)
		return rc;
	if (u.user_size < iommufd_ops[i].min_size)
		return -EINVAL;
	rc = copy_struct_from_user(&buf, iommufd_ops[i].size, arg, u.user_size);
	if (rc)
		return rc;
	/* Our own reference: a close() racing with the call cannot free the context. */
	u.conn = file_conn(f);
	if (!u.conn)
		return -EBADF;
	rc = iommufd_ops[i].fn(&u);
	conn_put(u.conn);
	return rc;
}

int iommufd_open(struct iopf_file *f)
{
	return conn_open(&f->conn);
}

void iommufd_release(struct iopf_file *f)
{
	struct iopf_conn *c;

	pthread_mutex_lock(&f->lock);
	c = f->conn;
	f->conn = NULL;
	pthread_mutex_unlock(&f->lock);
	if (c)
		conn_put(c);
}
