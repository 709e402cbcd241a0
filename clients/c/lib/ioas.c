// SPDX-License-Identifier: MIT
/*
 * IOMMU_IOAS_MAP and IOMMU_IOAS_UNMAP with the rules of the kernel's io_pagetable
 * (drivers/iommu/iommufd/io_pagetable.c): an IOAS is a set of areas, each the range of
 * one MAP; a fixed IOVA may not overlap an area (EEXIST); UNMAP takes whole areas only
 * (a range that cuts one is ENOENT, one that holds none is ENOENT), and 0..U64_MAX
 * unmaps everything. The daemon keeps the translation; the areas live here, with the
 * context that owns the IOAS. The caller holds no lock; ctx->lock is taken here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../include/iopf_uapi.h"
#include "internal.h"

/* The largest range one ioas_unmap request names (its length is a uint32). */
#define UNMAP_RUN_MAX (1ull << 30)

int ioas_area_insert(struct iopf_obj *ioas, uint64_t iova, uint64_t length)
{
	size_t i;

	if (ioas->nareas == ioas->cap) {
		size_t cap = ioas->cap ? ioas->cap * 2 : 16;
		struct ioas_area *a = realloc(ioas->areas, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		ioas->areas = a;
		ioas->cap = cap;
	}
	for (i = 0; i < ioas->nareas && ioas->areas[i].iova < iova; i++)
		;
	memmove(&ioas->areas[i + 1], &ioas->areas[i], (ioas->nareas - i) * sizeof(ioas->areas[0]));
	ioas->areas[i] = (struct ioas_area){ .iova = iova, .length = length };
	ioas->nareas++;
	return 0;
}

bool ioas_area_overlaps(const struct iopf_obj *ioas, uint64_t iova, uint64_t last)
{
	for (size_t i = 0; i < ioas->nareas; i++) {
		const struct ioas_area *a = &ioas->areas[i];
		if (a->iova <= last && iova <= a->iova + a->length - 1)
			return true;
	}
	return false;
}

/* iopt_check_iova() (drivers/iommu/iommufd/io_pagetable.c): a fixed IOVA range
 * must not wrap and must not overlap an area already mapped.  length != 0. */
int ioas_check_iova(const struct iopf_obj *ioas, uint64_t iova, uint64_t length)
{
	uint64_t last;

	if (__builtin_add_overflow(iova, length - 1, &last))
		return -EOVERFLOW;
	if (ioas_area_overlaps(ioas, iova, last))
		return -EEXIST;
	return 0;
}

static int wire_map(struct iopf_conn *c, uint32_t ioas_id, bool fixed, uint64_t *iova,
		    uint64_t length, unsigned perm)
{
	struct iopf_reply rep;
	struct mp_buf req;
	bool present;
	int rc;

	req_start(&req, "ioas_map", fixed ? 4 : 3);
	mp_put_str(&req, "ioas_id");
	mp_put_uint(&req, ioas_id);
	if (fixed) { /* without iova the daemon picks a free one, as the kernel does */
		mp_put_str(&req, "iova");
		mp_put_uint(&req, *iova);
	}
	mp_put_str(&req, "length");
	mp_put_uint(&req, length);
	mp_put_str(&req, "perm");
	mp_put_uint(&req, perm);
	rc = conn_call(c, &req, &rep);
	if (rc)
		return rc;
	uint64_t got = reply_u64(&rep, "iova", &present);
	reply_free(&rep);
	if (!fixed && !present)
		return -EIO; /* a daemon that does not choose IOVAs cannot get here */
	if (!fixed)
		*iova = got;
	return 0;
}

int ioas_wire_unmap(struct iopf_conn *c, uint32_t ioas_id, uint64_t iova, uint64_t length)
{
	struct mp_buf req;

	req_start(&req, "ioas_unmap", 3);
	mp_put_str(&req, "ioas_id");
	mp_put_uint(&req, ioas_id);
	mp_put_str(&req, "iova");
	mp_put_uint(&req, iova);
	mp_put_str(&req, "length");
	mp_put_uint(&req, length);
	return conn_call(c, &req, NULL);
}

/* iommufd_ioas_map() and iopt_map_user_pages(), in their order. */
int ioas_map(struct iopf_conn *c, void *arg)
{
	struct iommu_ioas_map *cmd = arg;
	const uint32_t known = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE |
			       IOMMU_IOAS_MAP_READABLE;
	struct iopf_ctx *ctx = conn_ctx(c);
	bool fixed = cmd->flags & IOMMU_IOAS_MAP_FIXED_IOVA;
	unsigned perm = 0;
	struct iopf_obj *ioas;
	uint64_t iova = cmd->iova, end;
	int rc;

	if ((cmd->flags & ~known) || cmd->__reserved)
		return -EOPNOTSUPP;
	if (cmd->iova >= UINT64_MAX || cmd->length >= UINT64_MAX)
		return -EOVERFLOW;
	if (!(cmd->flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE)))
		return -EINVAL;
	if (cmd->flags & IOMMU_IOAS_MAP_READABLE)
		perm |= IOMMU_PGFAULT_PERM_READ;
	if (cmd->flags & IOMMU_IOAS_MAP_WRITEABLE)
		perm |= IOMMU_PGFAULT_PERM_WRITE;

	pthread_mutex_lock(&ctx->lock);
	ioas = ctx_find(ctx, cmd->ioas_id);
	if (!ioas || ioas->kind != OBJ_IOAS) {
		rc = -ENOENT;
		goto out;
	}
	/* iopt_alloc_user_pages(): the user range itself. */
	if (!cmd->length) {
		rc = -EINVAL;
		goto out;
	}
	if (__builtin_add_overflow(cmd->user_va, cmd->length, &end)) {
		rc = -EOVERFLOW;
		goto out;
	}
	/* The emulated VT-d maps 4 KiB pages: iova_alignment is PAGE_SIZE. */
	if ((cmd->length & (IOPF_PAGE_SIZE - 1)) || (fixed && (iova & (IOPF_PAGE_SIZE - 1)))) {
		rc = -EINVAL;
		goto out;
	}
	if (fixed && (rc = ioas_check_iova(ioas, iova, cmd->length)))
		goto out;
	rc = wire_map(c, cmd->ioas_id, fixed, &iova, cmd->length, perm);
	if (rc)
		goto out;
	rc = ioas_area_insert(ioas, iova, cmd->length);
	if (rc) {
		ioas_wire_unmap(c, cmd->ioas_id, iova, cmd->length);
		goto out;
	}
	cmd->iova = iova;
out:
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* iommufd_ioas_unmap() and iopt_unmap_iova_range(): whole areas, in IOVA order. */
int ioas_unmap(struct iopf_conn *c, void *arg)
{
	struct iommu_ioas_unmap *cmd = arg;
	struct iopf_ctx *ctx = conn_ctx(c);
	bool all = cmd->iova == 0 && cmd->length == UINT64_MAX;
	uint64_t first = cmd->iova, last, unmapped = 0;
	struct iopf_obj *ioas;
	int rc = 0;

	pthread_mutex_lock(&ctx->lock);
	ioas = ctx_find(ctx, cmd->ioas_id);
	if (!ioas || ioas->kind != OBJ_IOAS) {
		rc = -ENOENT;
		goto out;
	}
	if (all) {
		last = UINT64_MAX;
	} else {
		if (cmd->iova >= UINT64_MAX || cmd->length >= UINT64_MAX) {
			rc = -EOVERFLOW;
			goto out;
		}
		if (!cmd->length) {
			rc = -EINVAL;
			goto out;
		}
		if (__builtin_add_overflow(cmd->iova, cmd->length - 1, &last)) {
			rc = -EOVERFLOW;
			goto out;
		}
	}
	/* Whole areas in IOVA order; adjacent ones go to the daemon as one range. */
	uint64_t run_iova = 0, run_len = 0;
	size_t run_first = 0, i = 0;
	for (;;) {
		const struct ioas_area *a = i < ioas->nareas ? &ioas->areas[i] : NULL;
		bool in = a && a->iova <= last && first <= a->iova + a->length - 1;
		bool whole = in && a->iova >= first && a->iova + a->length - 1 <= last;
		bool joins = whole && run_len && a->iova == run_iova + run_len &&
			     run_len + a->length <= UNMAP_RUN_MAX;

		if (run_len && !joins) { /* flush the run before this area */
			rc = ioas_wire_unmap(c, cmd->ioas_id, run_iova, run_len);
			if (rc)
				goto out;
			size_t n = i - run_first;
			memmove(&ioas->areas[run_first], &ioas->areas[i],
				(ioas->nareas - i) * sizeof(ioas->areas[0]));
			ioas->nareas -= n;
			i = run_first;
			unmapped += run_len;
			run_len = 0;
			continue;
		}
		if (!a || a->iova > last)
			break;
		if (in && !whole) {
			rc = -ENOENT; /* it would split an area */
			goto out;
		}
		if (whole) {
			if (!run_len) {
				run_first = i;
				run_iova = a->iova;
			}
			run_len += a->length;
		}
		i++;
	}
	/* Nothing there: ENOENT, except that unmapping everything of an empty IOAS works. */
	if (!unmapped && !all)
		rc = -ENOENT;
	cmd->length = unmapped;
out:
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}
