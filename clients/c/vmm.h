/* SPDX-License-Identifier: MIT */
/*
 * iopf-vmm-c: a demand-paging VMM written against the kernel uAPI, the libvfn way:
 * /dev/iommu and /dev/vfio/devices/vfioN, a fault queue, a fault-capable HWPT attached
 * by RID and by PASID, DMA in one thread per stream, and one fault thread that polls
 * the fault fd, reads whole groups, maps what is missing and writes the answers.
 * Run it under libiopf-preload.so (LD_PRELOAD) against iopfd.
 *
 *   vmm.c         options, setup (with the paging -> nested fallback), teardown
 *   vmm_dma.c     the guest workload: one DMA thread per stream, epochs, verify
 *   vmm_fault.c   the fault loop
 *   vmm_report.c  counters, latency percentiles, the summary
 */
#ifndef IOPF_VMM_H
#define IOPF_VMM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define VMM_PAGE 4096ull
#define VMM_MAX_DEVICES 16
#define VMM_MAX_PASIDS 8
#define VMM_MAX_STREAMS (VMM_MAX_DEVICES * (VMM_MAX_PASIDS + 1))
/* Where streams live: each its own 1 GiB of IOVA; guest physical memory packed. */
#define VMM_IOVA_BASE 0x100000000ull
#define VMM_IOVA_STRIDE 0x40000000ull
#define VMM_GPA_BASE 0x80000000ull
/* An address no stream owns: the guest programmed its device badly. */
#define VMM_BAD_IOVA 0x7f0000000000ull

struct vmm_options {
	int devices[VMM_MAX_DEVICES]; /* vfioN; empty: probe every function */
	int ndevices;
	int max_devices;
	int pasids;
	bool nested;
	const char *pattern;
	unsigned pages;
	unsigned dma_pages;
	unsigned stride;
	double duration;
	unsigned seed;
	unsigned bad_every; /* every Nth transfer goes to VMM_BAD_IOVA; 0: never */
	bool progress;
	bool json;
};

struct vmm_device {
	int index;      /* vfioN */
	int fd;
	uint32_t dev_id;
	uint32_t hwpt;  /* the fault-capable HWPT (nested: the stage-1 one) */
	uint32_t parent; /* nested: the nesting parent, else 0 */
	int pasids;     /* PASIDs attached: 1..pasids */
	unsigned pasid_log2;
};

struct vmm_stream {
	struct vmm_device *dev;
	int pasid;       /* -1: requests without PASID */
	uint64_t iova;   /* first byte of its buffer */
	uint64_t ram_off; /* its buffer's offset in guest RAM (nested: gpa - VMM_GPA_BASE) */
	uint8_t *touched; /* pages DMA'd in the current epoch */
};

struct samples {
	uint64_t *ns;
	size_t n, cap;
};

struct vmm_stats {
	pthread_mutex_t lock;
	uint64_t groups, faults, batches, success, invalid;
	uint64_t dma_ok, dma_invalid, dma_other, dma_bytes, dma_faults;
	uint64_t pages_mapped, map_calls, s1_pages_mapped, s1_map_calls, invalidations;
	uint64_t verified_pages, touched_pages, verify_dmas;
	unsigned epochs;
	double elapsed_s;
	struct samples fault_service, faulting_dma;
	char violations[8][160];
	unsigned nviolations;
};

struct vmm {
	struct vmm_options opt;
	int iommufd;
	uint32_t ioas;
	uint32_t fault_id;
	int fault_fd;
	bool nested;
	struct vmm_device devs[VMM_MAX_DEVICES];
	int ndevs;
	struct vmm_stream streams[VMM_MAX_STREAMS];
	int nstreams;
	uint8_t *ram;    /* host memory backing guest RAM */
	uint64_t ram_size;
	atomic_int dma_running; /* DMA threads still working */
	atomic_bool stop_faults;
	struct vmm_stats st;
};

/* vmm_fault.c */
void *vmm_fault_main(void *arg);
/* Finds the stream whose buffer holds @iova, or NULL. */
struct vmm_stream *vmm_stream_of(struct vmm *v, uint64_t iova);

/* vmm_dma.c */
int vmm_run_workload(struct vmm *v); /* epochs until the duration is over, then verify */

/* vmm_report.c */
uint64_t vmm_now_ns(void);
void samples_add(struct samples *s, uint64_t ns);
void vmm_violate(struct vmm *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vmm_progress(struct vmm *v, double elapsed);
void vmm_print_summary(struct vmm *v);

#endif /* IOPF_VMM_H */
