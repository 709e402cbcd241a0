// SPDX-License-Identifier: MIT
/* What iopf-vmm-c measured, printed as iopf-vmm's summary (clients/vmm/report.py). */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vmm.h"

uint64_t vmm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void samples_add(struct samples *s, uint64_t ns)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 1024;
		uint64_t *p = realloc(s->ns, cap * sizeof(*p));
		if (!p)
			return;
		s->ns = p;
		s->cap = cap;
	}
	s->ns[s->n++] = ns;
}

void vmm_violate(struct vmm *v, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&v->st.lock);
	if (v->st.nviolations < sizeof(v->st.violations) / sizeof(v->st.violations[0])) {
		va_start(ap, fmt);
		vsnprintf(v->st.violations[v->st.nviolations], sizeof(v->st.violations[0]), fmt, ap);
		va_end(ap);
	}
	v->st.nviolations++;
	pthread_mutex_unlock(&v->st.lock);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile, in milliseconds (report.py's percentile()). */
static double pct_ms(const struct samples *s, double q)
{
	if (!s->n)
		return 0;
	long k = (long)ceil(q / 100 * (double)s->n) - 1;
	if (k < 0)
		k = 0;
	if ((size_t)k >= s->n)
		k = (long)s->n - 1;
	return (double)s->ns[k] / 1e6;
}

static void latency_line(const char *label, struct samples *s, const char *what)
{
	qsort(s->ns, s->n, sizeof(s->ns[0]), cmp_u64);
	if (!s->n)
		printf("  %-15sno samples\n", label);
	else
		printf("  %-15sp50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms  (n=%zu)\n", label,
		       pct_ms(s, 50), pct_ms(s, 90), pct_ms(s, 99), (double)s->ns[s->n - 1] / 1e6,
		       s->n);
	printf("  %-15s(%s)\n", "", what);
}

void vmm_progress(struct vmm *v, double elapsed)
{
	pthread_mutex_lock(&v->st.lock);
	uint64_t dmas = v->st.dma_ok + v->st.dma_invalid + v->st.dma_other;
	fprintf(stderr, "[%5.1f s] epoch %u  dma %llu  groups %llu (%.0f/s)  faults %llu  mapped %llu  "
		"invalid %llu\n", elapsed, v->st.epochs, (unsigned long long)dmas,
		(unsigned long long)v->st.groups, elapsed > 0 ? (double)v->st.groups / elapsed : 0.0,
		(unsigned long long)v->st.faults, (unsigned long long)v->st.pages_mapped,
		(unsigned long long)v->st.invalid);
	pthread_mutex_unlock(&v->st.lock);
}

void vmm_print_summary(struct vmm *v)
{
	struct vmm_stats *st = &v->st;
	uint64_t dmas = st->dma_ok + st->dma_invalid + st->dma_other;
	char devs[256] = "";
	int pasids = 0;

	for (int i = 0; i < v->ndevs; i++) {
		size_t len = strlen(devs);
		snprintf(devs + len, sizeof(devs) - len, "%svfio%d", i ? ", " : "", v->devs[i].index);
		if (v->devs[i].pasids > pasids)
			pasids = v->devs[i].pasids;
	}
	printf("iopf-vmm-c summary (libiopf-preload, seed %u)\n", v->opt.seed);
	printf("  %-15s%s\n", "devices", devs);
	printf("  %-15s%s\n", "mode", v->nested ? "nested" : "paging");
	printf("  %-15s%d DMA streams, %s, %u pages each\n", "setup", v->nstreams, v->opt.pattern,
	       v->opt.pages);
	printf("  %-15s%d per device (plus the RID)\n", "pasids", pasids);
	printf("  %-15s%.2f s, %u epoch(s)\n", "ran", st->elapsed_s, st->epochs);
	printf("  %-15s%llu transfers (%llu ok, %llu invalid, %llu other), %.1f MiB, %llu page "
	       "requests issued\n", "dma", (unsigned long long)dmas,
	       (unsigned long long)st->dma_ok, (unsigned long long)st->dma_invalid,
	       (unsigned long long)st->dma_other, (double)st->dma_bytes / (1 << 20),
	       (unsigned long long)st->dma_faults);
	printf("  %-15s%llu handled in %llu batches (avg %.1f), %llu faults\n", "fault groups",
	       (unsigned long long)st->groups, (unsigned long long)st->batches,
	       st->batches ? (double)st->groups / (double)st->batches : 0.0,
	       (unsigned long long)st->faults);
	printf("  %-15sSUCCESS %llu, INVALID %llu\n", "answers", (unsigned long long)st->success,
	       (unsigned long long)st->invalid);
	printf("  %-15s%llu IOAS pages in %llu IOMMU_IOAS_MAP calls", "mapped",
	       (unsigned long long)st->pages_mapped, (unsigned long long)st->map_calls);
	if (v->nested)
		printf("; %llu stage-1 pages in %llu iopf_s1_map calls, %llu invalidations",
		       (unsigned long long)st->s1_pages_mapped, (unsigned long long)st->s1_map_calls,
		       (unsigned long long)st->invalidations);
	printf("\n");
	latency_line("fault service", &st->fault_service, "fault fd read() -> write() returned");
	latency_line("faulting dma", &st->faulting_dma, "iopf_dma() called -> returned, transfers "
		     "that faulted");
	printf("  %-15s%llu of %llu pages touched in the last epoch mapped (%llu DMAs without a "
	       "fault)\n", "verified", (unsigned long long)st->verified_pages,
	       (unsigned long long)st->touched_pages, (unsigned long long)st->verify_dmas);
	if (st->nviolations) {
		printf("  INVARIANTS BROKEN (%u):\n", st->nviolations);
		for (unsigned i = 0; i < st->nviolations && i < 8; i++)
			printf("    - %s\n", st->violations[i]);
	} else {
		printf("  %-15sok: every DMA ended as expected, every group answered\n", "invariants");
	}
}
