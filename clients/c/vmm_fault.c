// SPDX-License-Identifier: MIT
/*
 * The fault loop, as libvfn and QEMU run it on the kernel's fault fd: poll() for
 * POLLIN, read() as many whole groups as fit, make each faulting page present (the
 * IOAS; in nested mode first the guest's stage-1 entry, then an invalidation of it),
 * and write() one struct iommu_hwpt_page_response per group, all in one write.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "iopf.h"
#include "iopf_uapi.h"
#include "vmm.h"

#define READ_RECORDS 256

struct vmm_stream *vmm_stream_of(struct vmm *v, uint64_t iova)
{
	uint64_t span = (uint64_t)v->opt.pages * VMM_PAGE;

	for (int i = 0; i < v->nstreams; i++)
		if (iova >= v->streams[i].iova && iova - v->streams[i].iova < span)
			return &v->streams[i];
	return NULL;
}

/* The IOAS maps guest RAM: @gpa backed by the host page at @host. */
static int map_ioas_page(struct vmm *v, uint64_t gpa, uint8_t *host)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = v->ioas,
		.user_va = (uintptr_t)host,
		.length = VMM_PAGE,
		.iova = gpa,
	};

	if (ioctl(v->iommufd, IOMMU_IOAS_MAP, &m) == 0) {
		pthread_mutex_lock(&v->st.lock);
		v->st.pages_mapped++;
		v->st.map_calls++;
		pthread_mutex_unlock(&v->st.lock);
		return 0;
	}
	return errno == EEXIST ? 0 : -errno; /* another record of the run mapped it */
}

/* Makes the page behind one record present; false if the guest has no such page. */
static bool serve_record(struct vmm *v, const struct iommu_hwpt_pgfault *rec)
{
	uint64_t page = rec->addr & ~(VMM_PAGE - 1);
	struct vmm_stream *s = vmm_stream_of(v, page);
	int rc;

	if (!s)
		return false;
	uint64_t off = s->ram_off + (page - s->iova);
	if (!v->nested) /* iova is gpa */
		return map_ioas_page(v, page, v->ram + off) == 0;
	/* The guest's page table first (iova -> gpa), then the host's (gpa -> memory). */
	uint64_t gpa = VMM_GPA_BASE + off;
	if (iopf_s1_map(v->iommufd, s->dev->hwpt, page, VMM_PAGE, gpa,
			IOPF_PERM_READ | IOPF_PERM_WRITE))
		return false;
	rc = map_ioas_page(v, gpa, v->ram + off);
	struct iommu_hwpt_vtd_s1_invalidate inv = { .addr = page, .npages = 1 };
	struct iommu_hwpt_invalidate cmd = {
		.size = sizeof(cmd), .hwpt_id = s->dev->hwpt, .data_uptr = (uintptr_t)&inv,
		.data_type = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, .entry_len = sizeof(inv),
		.entry_num = 1,
	};
	if (ioctl(v->iommufd, IOMMU_HWPT_INVALIDATE, &cmd) || cmd.entry_num != 1)
		vmm_violate(v, "IOMMU_HWPT_INVALIDATE of %#llx: %s", (unsigned long long)page,
			    strerror(errno));
	pthread_mutex_lock(&v->st.lock);
	v->st.s1_pages_mapped++;
	v->st.s1_map_calls++;
	v->st.invalidations++;
	pthread_mutex_unlock(&v->st.lock);
	return rc == 0;
}

/* One read()'s worth: every group answered in one write(). */
static void serve_batch(struct vmm *v, const struct iommu_hwpt_pgfault *recs, size_t n,
			uint64_t t_read)
{
	struct iommu_hwpt_page_response resp[READ_RECORDS];
	size_t nresp = 0;
	bool group_ok = true;
	uint64_t good = 0, bad = 0;

	for (size_t i = 0; i < n; i++) {
		group_ok &= serve_record(v, &recs[i]);
		if (!(recs[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE))
			continue;
		resp[nresp].cookie = recs[i].cookie;
		resp[nresp].code = group_ok ? IOMMUFD_PAGE_RESP_SUCCESS : IOMMUFD_PAGE_RESP_INVALID;
		good += group_ok;
		bad += !group_ok;
		nresp++;
		group_ok = true;
	}
	ssize_t w = write(v->fault_fd, resp, nresp * sizeof(resp[0]));
	uint64_t t_done = vmm_now_ns();
	if (w != (ssize_t)(nresp * sizeof(resp[0])))
		vmm_violate(v, "write() of %zu answers returned %zd (%s)", nresp, w,
			    w < 0 ? strerror(errno) : "short");
	pthread_mutex_lock(&v->st.lock);
	v->st.groups += nresp;
	v->st.faults += n;
	v->st.batches++;
	v->st.success += good;
	v->st.invalid += bad;
	for (size_t i = 0; i < nresp; i++)
		samples_add(&v->st.fault_service, t_done - t_read);
	pthread_mutex_unlock(&v->st.lock);
}

void *vmm_fault_main(void *arg)
{
	struct vmm *v = arg;
	struct iommu_hwpt_pgfault recs[READ_RECORDS];

	for (;;) {
		struct pollfd p = { .fd = v->fault_fd, .events = POLLIN };
		int n = poll(&p, 1, 50);
		if (n < 0 && errno != EINTR) {
			vmm_violate(v, "poll on the fault fd: %s", strerror(errno));
			break;
		}
		if (n <= 0) {
			if (atomic_load(&v->stop_faults))
				break;
			continue;
		}
		ssize_t got = read(v->fault_fd, recs, sizeof(recs));
		uint64_t t_read = vmm_now_ns();
		if (got < 0) {
			vmm_violate(v, "read of the fault fd: %s", strerror(errno));
			break;
		}
		if (got % sizeof(recs[0]))
			vmm_violate(v, "read returned %zd bytes: not whole records", got);
		if (got > 0)
			serve_batch(v, recs, (size_t)got / sizeof(recs[0]), t_read);
	}
	return NULL;
}
