// SPDX-License-Identifier: MIT
/*
 * IOMMU_HWPT_ALLOC and IOMMU_HWPT_INVALIDATE (drivers/iommu/iommufd/hw_pagetable.c,
 * with the VT-d driver's nested parts from drivers/iommu/intel/nested.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "../include/iopf_uapi.h"
#include "internal.h"

/* --- IOMMU_HWPT_ALLOC ----------------------------------------------------------------- */

/* The driver's copy of the nested data (iommu_copy_struct_from_user, intel/nested.c). */
static int vtd_s1_data_check(const struct iommu_hwpt_alloc *cmd)
{
	struct iommu_hwpt_vtd_s1 vtd;

	if (cmd->data_len < offsetof(struct iommu_hwpt_vtd_s1, __reserved) + sizeof(uint32_t))
		return -EINVAL;
	return copy_struct_from_user(&vtd, sizeof(vtd), (const void *)(uintptr_t)cmd->data_uptr,
				     cmd->data_len);
}

static void put_hwpt_flags(struct mp_buf *req, uint32_t flags)
{
	static const struct {
		uint32_t bit;
		const char *name;
	} known[] = {
		{ IOMMU_HWPT_ALLOC_NEST_PARENT, "nest_parent" },
		{ IOMMU_HWPT_ALLOC_DIRTY_TRACKING, "dirty_tracking" },
		{ IOMMU_HWPT_ALLOC_PASID, "pasid" },
	};
	uint32_t unknown = flags & ~(IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING |
				     IOMMU_HWPT_ALLOC_PASID | IOMMU_HWPT_FAULT_ID_VALID);
	uint32_t n = unknown ? 1 : 0;
	char name[32];

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		n += (flags & known[i].bit) != 0;
	mp_put_str(req, "flags");
	mp_put_array(req, n);
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (flags & known[i].bit)
			mp_put_str(req, known[i].name);
	/* An unknown bit goes to the daemon by name, so that it answers EOPNOTSUPP at the
	 * point of iommufd_hwpt_alloc() where the kernel checks flags. */
	if (unknown) {
		snprintf(name, sizeof(name), "unknown_0x%x", unknown & -unknown);
		mp_put_str(req, name);
	}
}

static int hwpt_alloc_call(struct ucmd *u, bool with_fault, uint32_t *hwpt_id)
{
	struct iommu_hwpt_alloc *cmd = u->cmd;
	bool fault = with_fault && (cmd->flags & IOMMU_HWPT_FAULT_ID_VALID);
	bool data = cmd->data_type != IOMMU_HWPT_DATA_NONE;
	struct iopf_reply rep;
	struct mp_buf req;
	char type[32];
	int rc;

	req_start(&req, "hwpt_alloc", 3 + fault + data);
	mp_put_str(&req, "dev_id");
	mp_put_uint(&req, cmd->dev_id);
	mp_put_str(&req, "pt_id");
	mp_put_uint(&req, cmd->pt_id);
	put_hwpt_flags(&req, cmd->flags);
	if (fault) {
		mp_put_str(&req, "fault_id");
		mp_put_uint(&req, cmd->fault_id);
	}
	if (data) {
		if (cmd->data_type == IOMMU_HWPT_DATA_VTD_S1)
			snprintf(type, sizeof(type), "vtd_s1");
		else if (cmd->data_type == IOMMU_HWPT_DATA_ARM_SMMUV3)
			snprintf(type, sizeof(type), "arm_smmuv3");
		else
			snprintf(type, sizeof(type), "unknown_%u", cmd->data_type);
		mp_put_str(&req, "data");
		mp_put_map(&req, 1);
		mp_put_str(&req, "type");
		mp_put_str(&req, type);
	}
	rc = conn_call(u->conn, &req, &rep);
	if (rc)
		return rc;
	*hwpt_id = (uint32_t)reply_u64(&rep, "hwpt_id", NULL);
	reply_free(&rep);
	return 0;
}

int iommufd_hwpt_alloc(struct ucmd *u)
{
	struct iommu_hwpt_alloc *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	uint32_t hwpt_id;
	int rc, data_rc = 0;

	if (cmd->__reserved)
		return -EOPNOTSUPP;
	if ((cmd->data_type == IOMMU_HWPT_DATA_NONE && cmd->data_len) ||
	    (cmd->data_type != IOMMU_HWPT_DATA_NONE && !cmd->data_len))
		return -EINVAL;
	if (cmd->data_type == IOMMU_HWPT_DATA_VTD_S1)
		data_rc = vtd_s1_data_check(cmd);

	pthread_mutex_lock(&ctx->lock);
	if (data_rc) {
		/* The driver copies its data after the core checked the device, pt_id and
		 * flags, and before the fault queue is looked up: ask the daemon without the
		 * fault queue, and answer the data's error where it would have succeeded. */
		rc = hwpt_alloc_call(u, false, &hwpt_id);
		if (!rc) {
			destroy_obj(u->conn, hwpt_id);
			rc = data_rc;
		}
		pthread_mutex_unlock(&ctx->lock);
		return rc;
	}
	rc = hwpt_alloc_call(u, true, &hwpt_id);
	if (!rc) {
		cmd->out_hwpt_id = hwpt_id;
		rc = ucmd_respond(u, sizeof(*cmd));
		if (rc)
			destroy_obj(u->conn, hwpt_id);
		else if (!ctx_add(ctx, hwpt_id, cmd->data_type == IOMMU_HWPT_DATA_NONE
						   ? OBJ_HWPT_PAGING : OBJ_HWPT_NESTED))
			rc = -ENOMEM;
	}
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* --- IOMMU_HWPT_INVALIDATE ------------------------------------------------------------- */

static int hwpt_invalidate_call(struct iopf_conn *c, uint32_t hwpt_id, bool all, uint64_t iova,
				uint64_t length)
{
	struct mp_buf req;

	req_start(&req, "hwpt_invalidate", all ? 1 : 3);
	mp_put_str(&req, "hwpt_id");
	mp_put_uint(&req, hwpt_id);
	if (!all) {
		mp_put_str(&req, "iova");
		mp_put_uint(&req, iova);
		mp_put_str(&req, "length");
		mp_put_uint(&req, length);
	}
	return conn_call(c, &req, NULL);
}

/* intel_nested_cache_invalidate_user(): the entries in order, stopping at a bad one. */
static int vtd_s1_invalidate(struct iopf_conn *c, const struct iommu_hwpt_invalidate *cmd,
			     uint32_t *done)
{
	const uint32_t min_len = sizeof(struct iommu_hwpt_vtd_s1_invalidate);
	const uint8_t *base = (const uint8_t *)(uintptr_t)cmd->data_uptr;
	int rc = 0;

	*done = 0;
	if (cmd->data_type != IOMMU_HWPT_INVALIDATE_DATA_VTD_S1)
		return -EINVAL;
	for (uint32_t i = 0; i < cmd->entry_num; i++) {
		struct iommu_hwpt_vtd_s1_invalidate inv;

		if (cmd->entry_len < min_len)
			return -EINVAL;
		rc = copy_struct_from_user(&inv, sizeof(inv), base + (size_t)i * cmd->entry_len,
					   cmd->entry_len);
		if (rc)
			return rc;
		if ((inv.flags & ~IOMMU_VTD_INV_FLAGS_LEAF) || inv.__reserved)
			return -EOPNOTSUPP;
		if ((inv.addr & (IOPF_PAGE_SIZE - 1)) || (inv.npages == UINT64_MAX && inv.addr))
			return -EINVAL;
		if (inv.npages) {
			/* Ranges the daemon cannot name in one request are flushed whole:
			 * invalidating more than asked is always correct. */
			bool all = inv.npages > (UINT32_MAX / IOPF_PAGE_SIZE) ||
				   inv.addr + inv.npages * IOPF_PAGE_SIZE < inv.addr;
			rc = hwpt_invalidate_call(c, cmd->hwpt_id, all, inv.addr,
						  inv.npages * IOPF_PAGE_SIZE);
			if (rc)
				return rc;
		}
		(*done)++;
	}
	return 0;
}

int iommufd_hwpt_invalidate(struct ucmd *u)
{
	struct iommu_hwpt_invalidate *cmd = u->cmd;
	struct iopf_ctx *ctx = conn_ctx(u->conn);
	struct iopf_obj *o;
	uint32_t done = 0;
	int rc;

	if (cmd->__reserved) {
		rc = -EOPNOTSUPP;
	} else if (cmd->entry_num && (!cmd->data_uptr || !cmd->entry_len)) {
		rc = -EINVAL;
	} else {
		pthread_mutex_lock(&ctx->lock);
		o = ctx_find(ctx, cmd->hwpt_id);
		if (!o)
			rc = -ENOENT;
		else if (o->kind != OBJ_HWPT_NESTED)
			rc = -EINVAL; /* neither a nested HWPT nor a vIOMMU */
		else
			rc = vtd_s1_invalidate(u->conn, cmd, &done);
		pthread_mutex_unlock(&ctx->lock);
	}
	cmd->entry_num = done;
	if (ucmd_respond(u, sizeof(*cmd)))
		return -EFAULT;
	return rc;
}
