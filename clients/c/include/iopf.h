/* SPDX-License-Identifier: MIT */
/*
 * What the kernel uAPI does not have, served by libiopf-preload.so next to the
 * iommufd and VFIO ioctls it emulates:
 *
 *  - iopf_dma(): the emulated PCI function performs DMA through its ATC and the
 *    IOMMU, issuing PRI page requests on a miss (wire op `dma`). It returns once the
 *    transfer ended, which for a faulting transfer is after its page-request groups
 *    were answered: another thread must run the fault loop meanwhile.
 *  - iopf_s1_map()/iopf_s1_unmap(): write or clear a nested HWPT's stage-1 entries,
 *    as a guest writes its own page table (wire ops `hwpt_s1_map`, `hwpt_s1_unmap`).
 *
 * Every function is thread-safe. Errors return -1 with errno set.
 */
#ifndef IOPF_H
#define IOPF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How a transfer ended: the `status` strings of the wire protocol's `dma` reply. */
enum iopf_dma_status {
	IOPF_DMA_OK = 0,          /* every byte accessed */
	IOPF_DMA_INVALID = 1,     /* a group was answered INVALID */
	IOPF_DMA_FAILURE = 2,     /* PRI stopped by a Response Failure */
	IOPF_DMA_NO_PRI = 3,      /* a miss on a function without PRI, or with PRI off */
	IOPF_DMA_RETRY_LIMIT = 4, /* SUCCESS kept coming, the translation never appeared */
	IOPF_DMA_REMOVED = 5,     /* the function was hot-unplugged or released meanwhile */
};

/* Access permissions: the uAPI's IOMMU_PGFAULT_PERM_* values. */
#define IOPF_PERM_READ  (1u << 0)
#define IOPF_PERM_WRITE (1u << 1)
#define IOPF_PERM_EXEC  (1u << 2)
#define IOPF_PERM_PRIV  (1u << 3)

struct iopf_dma_result {
	int status;        /* enum iopf_dma_status */
	uint32_t faults;   /* page requests the function issued for this transfer */
	uint64_t bytes;    /* bytes accessed successfully */
};

/*
 * The function behind @device_fd (an open /dev/vfio/devices/vfioN, bound with
 * VFIO_DEVICE_BIND_IOMMUFD) accesses [@iova, @iova + @length) with @perm, at @pasid
 * (-1: requests without PASID). @iova and @length are 4 KiB aligned.
 * Returns an enum iopf_dma_status, or -1 with errno: EBADF (@device_fd is not a
 * VFIO device of this library), EINVAL (not bound, or bad arguments), ENODEV,
 * ENOSPC (too many transfers in flight), EIO (the daemon went away).
 */
int iopf_dma(int device_fd, int pasid, uint64_t iova, uint64_t length, unsigned perm);

/* iopf_dma() that also reports the page requests issued and the bytes accessed. */
int iopf_dma_ex(int device_fd, int pasid, uint64_t iova, uint64_t length, unsigned perm,
		struct iopf_dma_result *result);

/*
 * Stage-1 entries of nested HWPT @hwpt_id (allocated on /dev/iommu @iommufd with
 * IOMMU_HWPT_DATA_VTD_S1): [@iova, @iova + @length) -> @gpa with @perm. No invalidation
 * is implied: a previously cached translation stays until IOMMU_HWPT_INVALIDATE.
 * Returns 0 or -1 with errno (EBADF, ENOENT, EINVAL, ENOSPC, EIO).
 */
int iopf_s1_map(int iommufd, uint32_t hwpt_id, uint64_t iova, uint64_t length, uint64_t gpa,
		unsigned perm);

/* Clears stage-1 entries; *@unmapped (may be NULL) gets the bytes that were mapped. */
int iopf_s1_unmap(int iommufd, uint32_t hwpt_id, uint64_t iova, uint64_t length,
		  uint64_t *unmapped);

/* The text name of an enum iopf_dma_status ("ok", "invalid", ...), or "?". */
const char *iopf_dma_status_name(int status);

#ifdef __cplusplus
}
#endif

#endif /* IOPF_H */
