// SPDX-License-Identifier: MIT
/*
 * faultfd-bench: iopfd's fault path driven through the kernel uAPI, as a C VMM drives
 * the kernel's: /dev/iommu and /dev/vfio/devices/vfioN (libiopf-preload.so), a fault
 * queue (IOMMU_FAULT_QUEUE_ALLOC), a fault-capable HWPT (IOMMU_HWPT_ALLOC with
 * IOMMU_HWPT_FAULT_ID_VALID), read() of struct iommu_hwpt_pgfault from the fault fd,
 * IOMMU_IOAS_MAP of the faulting pages, write() of struct iommu_hwpt_page_response.
 * DMA is iopf_dma(), which returns once the transfer ended (after its faults were
 * answered), so transfers run in threads of their own and one thread serves the fault
 * fd, as libvfn and QEMU do (poll, read whole groups, map, answer in one write).
 *
 *   faultfd-bench [--daemon-pid PID] [--seconds S] [--reps N] [--stdin]
 *                 serial | throughput [--devices N] [--pasids P] [--window W]
 *
 * serial:     one transfer in flight on vfio0 at its RID: dma -> fault -> IOAS_MAP +
 *             page response -> dma done; faults/s and the latency of each iopf_dma().
 * throughput: W transfers in flight over N devices x P PASIDs (PASIDs 1..P, one fault
 *             queue for all); every read() takes what is pending (up to 1024 records),
 *             one IOAS_MAP per contiguous run of pages, one write() for every group.
 *
 * Each run prints one JSON line on stdout (samples_ns: the timed transfers' latencies,
 * sorted, for a driver to pool over runs). With --stdin the set-up stays and each line
 * read from stdin (a duration in seconds) is one run, so a driver can measure another
 * thing between runs; EOF ends. --daemon-pid: the daemon's CPU over the measured
 * window, from /proc/PID/task/<tid>/schedstat (as bench/wire.py's Daemon.cpu_ns).
 * The process's own CPU (every thread, the library's reader included) is reported too.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "iopf.h"
#include "iopf_uapi.h"

#define PAGE 4096ull
#define IOVA_BASE 0x1000000000ull /* bench/faults.py's IOVA_BASE */
#define MAX_DEVICES 16
#define MAX_PASIDS 8
#define MAX_STREAMS (MAX_DEVICES * MAX_PASIDS)
#define MAX_WINDOW 1024
#define READ_RECORDS 1024
#define LATENCY_EVERY 16 /* throughput: one transfer in 16 is timed, as in bench/faults.py */

struct stream {
	int dev_fd;
	int pasid; /* -1: at the RID */
};

struct bench {
	int iommufd;
	uint32_t ioas;
	int fault_fd;
	int dev_fds[MAX_DEVICES];
	int ndevs;
	struct stream streams[MAX_STREAMS];
	int nstreams;
	int daemon_pid;

	atomic_uint_fast64_t next_page; /* IOVA_BASE + next_page * PAGE: never reused */
	atomic_bool stop_dma, stop_faults;

	/* What the fault thread did. */
	atomic_uint_fast64_t groups, records, batches, maps, reads;
	/* What the DMA threads did. */
	atomic_uint_fast64_t completed, next_stream;

	/* Latency samples (ns) of transfers that started and ended in the window. */
	pthread_mutex_t lat_lock;
	uint64_t *lat;
	size_t nlat, cap_lat;
	_Atomic uint64_t window_start; /* 0: not measuring */
};

static void die(const char *what)
{
	fprintf(stderr, "faultfd-bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* A bench that stops midway measures nothing: say why and leave; closing the
 * connection makes the daemon answer what is pending. */
static void fail(const char *fmt, unsigned long long v)
{
	fprintf(stderr, "faultfd-bench: ");
	fprintf(stderr, fmt, v);
	fprintf(stderr, "\n");
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t self_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Every thread's run time of process @pid, ns (first field of schedstat). */
static uint64_t daemon_cpu_ns(int pid)
{
	char path[64];
	uint64_t total = 0;
	DIR *d;
	struct dirent *e;

	if (pid <= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char stat[320];
		unsigned long long ns;
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(stat, sizeof(stat), "/proc/%d/task/%s/schedstat", pid, e->d_name);
		f = fopen(stat, "r");
		if (!f)
			continue;
		if (fscanf(f, "%llu", &ns) == 1)
			total += ns;
		fclose(f);
	}
	closedir(d);
	return total;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull),
			       .tv_nsec = (long)(ns % 1000000000ull) };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* --- set-up: the uAPI calls a VMM makes ------------------------------------------------- */

static void setup(struct bench *b, int ndevs, int npasids)
{
	struct iommu_ioas_alloc ioas = { .size = sizeof(ioas) };
	struct iommu_fault_alloc fault = { .size = sizeof(fault) };

	b->iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (b->iommufd < 0)
		die("open /dev/iommu (is $IOPFD_SOCKET set, libiopf-preload.so loaded?)");
	if (ioctl(b->iommufd, IOMMU_IOAS_ALLOC, &ioas))
		die("IOMMU_IOAS_ALLOC");
	b->ioas = ioas.out_ioas_id;
	if (ioctl(b->iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fault))
		die("IOMMU_FAULT_QUEUE_ALLOC");
	b->fault_fd = (int)fault.out_fault_fd;

	for (int i = 0; i < ndevs; i++) {
		char path[64];
		struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
		int fd;

		snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%d", i);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			die(path);
		bind.iommufd = b->iommufd;
		if (ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind))
			die("VFIO_DEVICE_BIND_IOMMUFD");
		struct iommu_hwpt_alloc hwpt = {
			.size = sizeof(hwpt),
			.flags = IOMMU_HWPT_FAULT_ID_VALID | (npasids ? IOMMU_HWPT_ALLOC_PASID : 0),
			.dev_id = bind.out_devid,
			.pt_id = b->ioas,
			.fault_id = fault.out_fault_id,
		};
		if (ioctl(b->iommufd, IOMMU_HWPT_ALLOC, &hwpt))
			die("IOMMU_HWPT_ALLOC");
		for (int p = npasids ? 1 : -1; p <= npasids; p++) {
			struct vfio_device_attach_iommufd_pt at = {
				.argsz = sizeof(at),
				.flags = p >= 0 ? VFIO_DEVICE_ATTACH_PASID : 0,
				.pt_id = hwpt.out_hwpt_id,
				.pasid = p >= 0 ? (uint32_t)p : 0,
			};
			if (ioctl(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at))
				die("VFIO_DEVICE_ATTACH_IOMMUFD_PT");
			b->streams[b->nstreams++] = (struct stream){ .dev_fd = fd, .pasid = p };
			if (p < 0)
				break;
		}
		b->dev_fds[b->ndevs++] = fd;
	}
}

/* Closing the devices detaches and unbinds; closing /dev/iommu releases the rest. */
static void teardown(struct bench *b)
{
	for (int i = 0; i < b->ndevs; i++)
		close(b->dev_fds[i]);
	close(b->fault_fd);
	close(b->iommufd);
}

/* --- the fault thread ------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static bool map_run(struct bench *b, uint64_t iova, uint64_t length)
{
	static uint8_t memory[PAGE] __attribute__((aligned(PAGE)));
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = b->ioas,
		.user_va = (uintptr_t)memory, /* not read: the emulated devices move no data */
		.length = length,
		.iova = iova,
	};

	atomic_fetch_add(&b->maps, 1);
	return ioctl(b->iommufd, IOMMU_IOAS_MAP, &m) == 0;
}

/* One read()'s records: each contiguous run of pages mapped once, every group answered
 * in one write(). */
static void serve(struct bench *b, const struct iommu_hwpt_pgfault *recs, size_t n)
{
	static uint64_t pages[READ_RECORDS];
	static struct iommu_hwpt_page_response resp[READ_RECORDS];
	size_t npages = 0, nresp = 0;

	for (size_t i = 0; i < n; i++) {
		pages[npages++] = recs[i].addr & ~(PAGE - 1);
		if (recs[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE)
			resp[nresp++] = (struct iommu_hwpt_page_response){
				.cookie = recs[i].cookie, .code = IOMMUFD_PAGE_RESP_SUCCESS
			};
	}
	qsort(pages, npages, sizeof(pages[0]), cmp_u64);
	for (size_t i = 0; i < npages;) {
		size_t j = i + 1;
		uint64_t end = pages[i] + PAGE;
		for (; j < npages && pages[j] <= end; j++)
			if (pages[j] == end)
				end += PAGE;
		if (!map_run(b, pages[i], end - pages[i]))
			fail("IOMMU_IOAS_MAP of %#llx failed", (unsigned long long)pages[i]);
		i = j;
	}
	/* Counted before the answers go: a transfer returns once answered, so a window
	 * that ends when its last transfer returned has counted that transfer's group. */
	atomic_fetch_add(&b->groups, nresp);
	atomic_fetch_add(&b->records, n);
	atomic_fetch_add(&b->batches, 1);
	ssize_t w = write(b->fault_fd, resp, nresp * sizeof(resp[0]));
	if (w != (ssize_t)(nresp * sizeof(resp[0])))
		fail("write() of the answers returned %lld", (unsigned long long)w);
}

static void *fault_main(void *arg)
{
	struct bench *b = arg;
	static struct iommu_hwpt_pgfault recs[READ_RECORDS];

	while (!atomic_load(&b->stop_faults)) {
		struct pollfd p = { .fd = b->fault_fd, .events = POLLIN };
		int n = poll(&p, 1, 20);

		if (n < 0 && errno != EINTR)
			fail("poll of the fault fd: errno %llu", (unsigned long long)errno);
		if (n <= 0)
			continue;
		ssize_t got = read(b->fault_fd, recs, sizeof(recs));
		atomic_fetch_add(&b->reads, 1);
		if (got < 0 || got % sizeof(recs[0]))
			fail("read() of the fault fd returned %lld", (unsigned long long)got);
		if (got)
			serve(b, recs, (size_t)got / sizeof(recs[0]));
	}
	return NULL;
}

/* --- DMA -------------------------------------------------------------------------------- */

static void lat_add(struct bench *b, uint64_t ns)
{
	pthread_mutex_lock(&b->lat_lock);
	if (b->nlat == b->cap_lat) {
		size_t cap = b->cap_lat ? 2 * b->cap_lat : 4096;
		uint64_t *p = realloc(b->lat, cap * sizeof(*p));
		if (!p)
			die("realloc");
		b->lat = p;
		b->cap_lat = cap;
	}
	b->lat[b->nlat++] = ns;
	pthread_mutex_unlock(&b->lat_lock);
}

/* One one-page write at a fresh IOVA of @s: it faults, and returns once answered. */
static void dma_one(struct bench *b, const struct stream *s, bool timed)
{
	uint64_t iova = IOVA_BASE + atomic_fetch_add(&b->next_page, 1) * PAGE;
	uint64_t t0 = now_ns();
	int st = iopf_dma(s->dev_fd, s->pasid, iova, PAGE, IOPF_PERM_WRITE);
	uint64_t t1 = now_ns();

	if (st != IOPF_DMA_OK)
		fail(st < 0 ? "iopf_dma failed: errno %llu" : "iopf_dma ended with status %llu",
		     (unsigned long long)(st < 0 ? errno : st));
	uint64_t start = atomic_load(&b->window_start);
	if (timed && start && t0 >= start)
		lat_add(b, t1 - t0);
	atomic_fetch_add(&b->completed, 1);
}

static void *dma_main(void *arg)
{
	struct bench *b = arg;

	while (!atomic_load(&b->stop_dma)) {
		uint64_t k = atomic_fetch_add(&b->next_stream, 1);
		dma_one(b, &b->streams[k % (uint64_t)b->nstreams], k % LATENCY_EVERY == 0);
	}
	return NULL;
}

/* --- one run ----------------------------------------------------------------------------- */

struct snap {
	uint64_t t, daemon, self, groups, records, batches, maps, reads, completed;
};

static struct snap snap(struct bench *b)
{
	return (struct snap){
		.t = now_ns(),
		.daemon = daemon_cpu_ns(b->daemon_pid),
		.self = self_cpu_ns(),
		.groups = atomic_load(&b->groups),
		.records = atomic_load(&b->records),
		.batches = atomic_load(&b->batches),
		.maps = atomic_load(&b->maps),
		.reads = atomic_load(&b->reads),
		.completed = atomic_load(&b->completed),
	};
}

static double percentile_us(uint64_t *sorted, size_t n, double q)
{
	if (!n)
		return 0;
	size_t rank = (size_t)(q / 100 * (double)n + 0.999999);
	rank = rank ? rank - 1 : 0;
	return (double)sorted[rank < n ? rank : n - 1] / 1000.0;
}

static void report(struct bench *b, const char *mode, int window, struct snap *s0,
		   struct snap *s1)
{
	double el = (double)(s1->t - s0->t) / 1e9;
	uint64_t events = s1->groups - s0->groups;

	qsort(b->lat, b->nlat, sizeof(b->lat[0]), cmp_u64);
	printf("{\"mode\": \"%s\", \"streams\": %d, \"window\": %d, \"elapsed_s\": %.6f, "
	       "\"groups\": %llu, \"records\": %llu, \"batches\": %llu, \"maps\": %llu, "
	       "\"reads\": %llu, \"completed\": %llu, \"rate\": %.1f, "
	       "\"daemon_cpu_ns\": %llu, \"client_cpu_ns\": %llu, "
	       "\"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, \"samples\": %zu, "
	       "\"samples_ns\": [",
	       mode, b->nstreams, window, el, (unsigned long long)events,
	       (unsigned long long)(s1->records - s0->records),
	       (unsigned long long)(s1->batches - s0->batches),
	       (unsigned long long)(s1->maps - s0->maps),
	       (unsigned long long)(s1->reads - s0->reads),
	       (unsigned long long)(s1->completed - s0->completed), (double)events / el,
	       (unsigned long long)(s1->daemon - s0->daemon),
	       (unsigned long long)(s1->self - s0->self), percentile_us(b->lat, b->nlat, 50),
	       percentile_us(b->lat, b->nlat, 99), percentile_us(b->lat, b->nlat, 100), b->nlat);
	for (size_t i = 0; i < b->nlat; i++)
		printf(i ? ", %llu" : "%llu", (unsigned long long)b->lat[i]);
	printf("]}\n");
	fflush(stdout);
}

static void run_serial(struct bench *b, double seconds, int warmup)
{
	struct snap s0, s1;
	pthread_t ft;
	uint64_t deadline;

	b->nlat = 0;
	atomic_store(&b->stop_faults, false);
	if (pthread_create(&ft, NULL, fault_main, b))
		die("pthread_create");
	for (int i = 0; i < warmup; i++)
		dma_one(b, &b->streams[0], false);
	s0 = snap(b);
	atomic_store(&b->window_start, s0.t);
	deadline = s0.t + (uint64_t)(seconds * 1e9);
	do
		dma_one(b, &b->streams[0], true);
	while (now_ns() < deadline);
	s1 = snap(b);
	atomic_store(&b->window_start, 0);
	atomic_store(&b->stop_faults, true);
	pthread_join(ft, NULL);
	report(b, "serial", 1, &s0, &s1);
}

static void run_throughput(struct bench *b, double seconds, int window)
{
	pthread_t ft, dt[MAX_WINDOW];
	struct snap s0, s1;
	double warm = seconds / 3 < 0.3 ? seconds / 3 : 0.3; /* as bench/faults.py */

	b->nlat = 0;
	atomic_store(&b->stop_dma, false);
	atomic_store(&b->stop_faults, false);
	if (pthread_create(&ft, NULL, fault_main, b))
		die("pthread_create");
	for (int i = 0; i < window; i++)
		if (pthread_create(&dt[i], NULL, dma_main, b))
			die("pthread_create");
	sleep_ns((uint64_t)(warm * 1e9));
	s0 = snap(b);
	atomic_store(&b->window_start, s0.t);
	sleep_ns((uint64_t)(seconds * 1e9));
	s1 = snap(b);
	atomic_store(&b->window_start, 0);
	/* The transfers in flight end once answered: the fault thread serves until then. */
	atomic_store(&b->stop_dma, true);
	for (int i = 0; i < window; i++)
		pthread_join(dt[i], NULL);
	atomic_store(&b->stop_faults, true);
	pthread_join(ft, NULL);
	report(b, "throughput", window, &s0, &s1);
}

/* --- main --------------------------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr, "usage: faultfd-bench [--daemon-pid PID] [--seconds S] [--reps N] "
			"[--stdin] serial|throughput [--devices N] [--pasids P] [--window W]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static struct bench b = { .lat_lock = PTHREAD_MUTEX_INITIALIZER };
	const char *mode = NULL;
	double seconds = 1.0;
	int reps = 1, devices = 16, pasids = 4, window = 256, warmup = 20;
	bool from_stdin = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--stdin")) {
			from_stdin = true;
		} else if (!strcmp(a, "serial") || !strcmp(a, "throughput")) {
			mode = a;
		} else if (v && !strcmp(a, "--daemon-pid")) {
			b.daemon_pid = atoi(v), i++;
		} else if (v && !strcmp(a, "--seconds")) {
			seconds = atof(v), i++;
		} else if (v && !strcmp(a, "--reps")) {
			reps = atoi(v), i++;
		} else if (v && !strcmp(a, "--devices")) {
			devices = atoi(v), i++;
		} else if (v && !strcmp(a, "--pasids")) {
			pasids = atoi(v), i++;
		} else if (v && !strcmp(a, "--window")) {
			window = atoi(v), i++;
		} else {
			usage();
		}
	}
	if (!mode || devices < 1 || devices > MAX_DEVICES || pasids < 0 || pasids > MAX_PASIDS ||
	    window < 1 || window > MAX_WINDOW || seconds <= 0)
		usage();

	bool serial = !strcmp(mode, "serial");
	/* Serial: one device at its RID, as bench/faults.py's serial VMM. */
	setup(&b, serial ? 1 : devices, serial ? 0 : pasids);
	for (int r = 0; from_stdin || r < reps; r++) {
		if (from_stdin) {
			char line[64];
			if (!fgets(line, sizeof(line), stdin))
				break;
			seconds = atof(line);
			if (seconds <= 0)
				break;
		}
		if (serial)
			run_serial(&b, seconds, warmup);
		else
			run_throughput(&b, seconds, window);
	}
	teardown(&b);
	free(b.lat);
	return 0;
}
