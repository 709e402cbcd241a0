// SPDX-License-Identifier: MIT
/* iopf.h: what the kernel uAPI has no call for (wire ops dma, hwpt_s1_map/_unmap). */
#define _GNU_SOURCE
#include <errno.h>

#include "../include/iopf.h"
#include "internal.h"

#pragma GCC visibility push(default)

static const char *const status_names[] = {
	[IOPF_DMA_OK] = "ok",
	[IOPF_DMA_INVALID] = "invalid",
	[IOPF_DMA_FAILURE] = "failure",
	[IOPF_DMA_NO_PRI] = "no_pri",
	[IOPF_DMA_RETRY_LIMIT] = "retry_limit",
	[IOPF_DMA_REMOVED] = "removed",
};

const char *iopf_dma_status_name(int status)
{
	if (status < 0 || (size_t)status >= sizeof(status_names) / sizeof(status_names[0]))
		return "?";
	return status_names[status];
}

static int fail(int err)
{
	errno = err;
	return -1;
}

int iopf_dma_ex(int device_fd, int pasid, uint64_t iova, uint64_t length, unsigned perm,
		struct iopf_dma_result *result)
{
	struct iopf_file *f;
	struct iopf_conn *c = NULL;
	struct iopf_reply rep;
	struct mp_buf req;
	uint32_t dev_id = 0;
	int rc, status = -1;

	iopf_real_init();
	f = fdtab_get(device_fd);
	if (!f || f->kind != IOPF_VFIO) {
		if (f)
			file_put(f);
		return fail(EBADF);
	}
	/* Hold the connection, not the device: its ioctls stay free while the transfer
	 * waits for its faults to be answered. */
	pthread_mutex_lock(&f->lock);
	if (f->u.vfio.bound) {
		c = f->conn;
		conn_get(c);
		dev_id = f->u.vfio.dev_id;
	}
	pthread_mutex_unlock(&f->lock);
	file_put(f);
	if (!c) /* not bound */
		return fail(EINVAL);
	if (pasid < -1) {
		conn_put(c);
		return fail(EINVAL);
	}

	req_start(&req, "dma", pasid >= 0 ? 5 : 4);
	mp_put_str(&req, "dev_id");
	mp_put_uint(&req, dev_id);
	if (pasid >= 0) {
		mp_put_str(&req, "pasid");
		mp_put_uint(&req, (unsigned)pasid);
	}
	mp_put_str(&req, "iova");
	mp_put_uint(&req, iova);
	mp_put_str(&req, "length");
	mp_put_uint(&req, length);
	mp_put_str(&req, "perm");
	mp_put_uint(&req, perm);
	rc = conn_call(c, &req, &rep);
	conn_put(c);
	if (rc)
		return fail(-rc);
	const struct mp_obj *s = mp_map_get(rep.result, "status");
	for (size_t i = 0; i < sizeof(status_names) / sizeof(status_names[0]); i++)
		if (mp_str_eq(s, status_names[i]))
			status = (int)i;
	if (result) {
		result->status = status;
		result->faults = (uint32_t)reply_u64(&rep, "faults", NULL);
		result->bytes = reply_u64(&rep, "bytes", NULL);
	}
	reply_free(&rep);
	return status >= 0 ? status : fail(EIO);
}

int iopf_dma(int device_fd, int pasid, uint64_t iova, uint64_t length, unsigned perm)
{
	return iopf_dma_ex(device_fd, pasid, iova, length, perm, NULL);
}

/* The connection of an open /dev/iommu, referenced; NULL (EBADF) for anything else. */
static struct iopf_conn *iommufd_conn(int iommufd)
{
	struct iopf_file *f;
	struct iopf_conn *c = NULL;

	iopf_real_init();
	f = fdtab_get(iommufd);
	if (f && f->kind == IOPF_IOMMUFD)
		c = file_conn(f);
	if (f)
		file_put(f);
	return c;
}

/* The head both stage-1 requests share: which HWPT, which IOVA range. */
static void s1_req(struct mp_buf *req, const char *op, unsigned nkeys, uint32_t hwpt_id,
		   uint64_t iova, uint64_t length)
{
	req_start(req, op, nkeys);
	mp_put_str(req, "hwpt_id");
	mp_put_uint(req, hwpt_id);
	mp_put_str(req, "iova");
	mp_put_uint(req, iova);
	mp_put_str(req, "length");
	mp_put_uint(req, length);
}

int iopf_s1_map(int iommufd, uint32_t hwpt_id, uint64_t iova, uint64_t length, uint64_t gpa,
		unsigned perm)
{
	struct iopf_conn *c = iommufd_conn(iommufd);
	struct mp_buf req;
	int rc;

	if (!c)
		return fail(EBADF);
	s1_req(&req, "hwpt_s1_map", 5, hwpt_id, iova, length);
	mp_put_str(&req, "gpa");
	mp_put_uint(&req, gpa);
	mp_put_str(&req, "perm");
	mp_put_uint(&req, perm);
	rc = conn_call(c, &req, NULL);
	conn_put(c);
	return rc ? fail(-rc) : 0;
}

int iopf_s1_unmap(int iommufd, uint32_t hwpt_id, uint64_t iova, uint64_t length,
		  uint64_t *unmapped)
{
	struct iopf_conn *c = iommufd_conn(iommufd);
	struct iopf_reply rep;
	struct mp_buf req;
	int rc;

	if (!c)
		return fail(EBADF);
	s1_req(&req, "hwpt_s1_unmap", 3, hwpt_id, iova, length);
	rc = conn_call(c, &req, &rep);
	conn_put(c);
	if (rc)
		return fail(-rc);
	if (unmapped)
		*unmapped = reply_u64(&rep, "unmapped", NULL);
	reply_free(&rep);
	return 0;
}

#pragma GCC visibility pop
