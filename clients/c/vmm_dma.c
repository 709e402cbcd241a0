// SPDX-License-Identifier: MIT
/*
 * The guest workload: each stream (a device's RID or one of its PASIDs) DMAs over its
 * own buffer in runs of dma_pages pages, in the chosen order, one transfer at a time
 * (iopf_dma blocks until the transfer's faults were answered). Every bad_every-th
 * transfer goes to an address the guest does not have, which the fault loop must
 * answer INVALID. An epoch is one pass; between epochs everything is unmapped so that
 * the next pass faults again. At the end, the pages of the last epoch are DMA'd once
 * more: they must be present (no fault).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "iopf.h"
#include "iopf_uapi.h"
#include "vmm.h"

#define VERIFY_RUN_PAGES 64

static atomic_uint transfers;

struct worker {
	struct vmm *v;
	struct vmm_stream *s;
	uint64_t rng;
	pthread_t thread;
};

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* The order of the runs of one pass. */
static unsigned *plan(struct vmm *v, uint64_t *rng, unsigned nruns)
{
	unsigned *order = malloc(nruns * sizeof(*order));
	unsigned k = 0;

	if (!order)
		return NULL;
	if (strcmp(v->opt.pattern, "strided") == 0) {
		unsigned stride = v->opt.stride ? v->opt.stride : 1;
		for (unsigned off = 0; off < stride; off++)
			for (unsigned r = off; r < nruns; r += stride)
				order[k++] = r;
	} else {
		for (unsigned r = 0; r < nruns; r++)
			order[r] = r;
		if (strcmp(v->opt.pattern, "random") == 0)
			for (unsigned r = nruns - 1; r > 0; r--) {
				unsigned j = (unsigned)(xorshift(rng) % (r + 1));
				unsigned t = order[r];
				order[r] = order[j];
				order[j] = t;
			}
	}
	return order;
}

static void one_dma(struct vmm *v, struct vmm_stream *s, uint64_t iova, uint64_t len, bool bad)
{
	struct iopf_dma_result r = { 0 };
	uint64_t t0 = vmm_now_ns();
	int st = iopf_dma_ex(s->dev->fd, s->pasid, iova, len, IOPF_PERM_READ | IOPF_PERM_WRITE, &r);
	uint64_t t1 = vmm_now_ns();

	if (st < 0) {
		vmm_violate(v, "iopf_dma(vfio%d, %#llx): %s", s->dev->index,
			    (unsigned long long)iova, strerror(errno));
		return;
	}
	pthread_mutex_lock(&v->st.lock);
	if (st == IOPF_DMA_OK)
		v->st.dma_ok++;
	else if (st == IOPF_DMA_INVALID)
		v->st.dma_invalid++;
	else
		v->st.dma_other++;
	v->st.dma_bytes += r.bytes;
	v->st.dma_faults += r.faults;
	if (r.faults)
		samples_add(&v->st.faulting_dma, t1 - t0);
	pthread_mutex_unlock(&v->st.lock);
	if (st != (bad ? IOPF_DMA_INVALID : IOPF_DMA_OK))
		vmm_violate(v, "transfer at %#llx on vfio%d pasid %d ended %s, expected %s",
			    (unsigned long long)iova, s->dev->index, s->pasid,
			    iopf_dma_status_name(st), bad ? "invalid" : "ok");
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct vmm *v = w->v;
	struct vmm_stream *s = w->s;
	unsigned dp = v->opt.dma_pages, nruns = (v->opt.pages + dp - 1) / dp;
	unsigned *order = plan(v, &w->rng, nruns);

	for (unsigned k = 0; order && k < nruns; k++) {
		unsigned first = order[k] * dp;
		unsigned n = first + dp <= v->opt.pages ? dp : v->opt.pages - first;
		one_dma(v, s, s->iova + first * VMM_PAGE, n * VMM_PAGE, false);
		memset(s->touched + first, 1, n);
		if (v->opt.bad_every && atomic_fetch_add(&transfers, 1) % v->opt.bad_every ==
						v->opt.bad_every - 1)
			one_dma(v, s, VMM_BAD_IOVA, VMM_PAGE, true);
	}
	free(order);
	atomic_fetch_sub(&v->dma_running, 1);
	return NULL;
}

static double elapsed_s(uint64_t t0)
{
	return (double)(vmm_now_ns() - t0) / 1e9;
}

/* Between epochs: the guest gives its memory back, the next pass faults again. */
static void unmap_everything(struct vmm *v)
{
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = v->ioas, .length = UINT64_MAX };

	if (ioctl(v->iommufd, IOMMU_IOAS_UNMAP, &u))
		vmm_violate(v, "IOMMU_IOAS_UNMAP of everything: %s", strerror(errno));
	for (int i = 0; v->nested && i < v->nstreams; i++) {
		struct vmm_stream *s = &v->streams[i];
		if (iopf_s1_unmap(v->iommufd, s->dev->hwpt, s->iova, v->opt.pages * VMM_PAGE, NULL))
			vmm_violate(v, "iopf_s1_unmap: %s", strerror(errno));
	}
	for (int i = 0; v->nested && i < v->ndevs; i++) {
		struct iommu_hwpt_vtd_s1_invalidate inv = { .addr = 0, .npages = UINT64_MAX };
		struct iommu_hwpt_invalidate cmd = {
			.size = sizeof(cmd), .hwpt_id = v->devs[i].hwpt, .data_uptr = (uintptr_t)&inv,
			.data_type = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, .entry_len = sizeof(inv),
			.entry_num = 1,
		};
		if (ioctl(v->iommufd, IOMMU_HWPT_INVALIDATE, &cmd))
			vmm_violate(v, "IOMMU_HWPT_INVALIDATE of everything: %s", strerror(errno));
	}
}

static void verify(struct vmm *v)
{
	for (int i = 0; i < v->nstreams; i++) {
		struct vmm_stream *s = &v->streams[i];
		for (unsigned p = 0; p < v->opt.pages;) {
			if (!s->touched[p]) {
				p++;
				continue;
			}
			unsigned n = 0;
			while (p + n < v->opt.pages && s->touched[p + n] && n < VERIFY_RUN_PAGES)
				n++;
			struct iopf_dma_result r = { 0 };
			int st = iopf_dma_ex(s->dev->fd, s->pasid, s->iova + p * VMM_PAGE, n * VMM_PAGE,
					     IOPF_PERM_READ | IOPF_PERM_WRITE, &r);
			v->st.verify_dmas++;
			v->st.touched_pages += n;
			if (st == IOPF_DMA_OK && r.faults == 0)
				v->st.verified_pages += n;
			else
				vmm_violate(v, "verify of %u pages at %#llx: %s, %u faults", n,
					    (unsigned long long)(s->iova + p * VMM_PAGE),
					    st < 0 ? strerror(errno) : iopf_dma_status_name(st), r.faults);
			p += n;
		}
	}
}

int vmm_run_workload(struct vmm *v)
{
	struct worker *w = calloc((size_t)v->nstreams, sizeof(*w));
	uint64_t t0 = vmm_now_ns();
	double last_progress = 0;

	if (!w)
		return -ENOMEM;
	for (;;) {
		for (int i = 0; i < v->nstreams; i++)
			memset(v->streams[i].touched, 0, v->opt.pages);
		atomic_store(&v->dma_running, v->nstreams);
		for (int i = 0; i < v->nstreams; i++) {
			w[i] = (struct worker){ .v = v, .s = &v->streams[i],
						.rng = (uint64_t)v->opt.seed * 7919 + (uint64_t)i * 104729 +
						       v->st.epochs + 1 };
			if (pthread_create(&w[i].thread, NULL, worker_main, &w[i])) {
				atomic_fetch_sub(&v->dma_running, 1);
				w[i].thread = 0;
				vmm_violate(v, "pthread_create failed");
			}
		}
		while (atomic_load(&v->dma_running) > 0) {
			usleep(20 * 1000);
			if (v->opt.progress && elapsed_s(t0) - last_progress >= 1.0) {
				last_progress = elapsed_s(t0);
				vmm_progress(v, last_progress);
			}
		}
		for (int i = 0; i < v->nstreams; i++)
			if (w[i].thread)
				pthread_join(w[i].thread, NULL);
		v->st.epochs++;
		if (v->opt.duration <= 0 || elapsed_s(t0) >= v->opt.duration)
			break;
		unmap_everything(v);
	}
	v->st.elapsed_s = elapsed_s(t0);
	verify(v);
	free(w);
	return 0;
}
