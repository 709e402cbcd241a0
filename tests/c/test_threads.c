// SPDX-License-Identifier: MIT
/* Many threads on one context: transfers, the fault loop and ioctls all at once. */
#include "ctest.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define WORKERS 3
#define TRANSFERS 20

struct worker {
	pthread_t thread;
	int dev, pasid;
	uint64_t base;
	int ok, other;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	for (int i = 0; i < TRANSFERS; i++) {
		int st = iopf_dma(w->dev, w->pasid, w->base + (uint64_t)i * 4 * PAGE, 4 * PAGE, RW);
		if (st == IOPF_DMA_OK)
			w->ok++;
		else
			w->other++;
	}
	return NULL;
}

struct server {
	pthread_t thread;
	struct t_env *e;
	volatile int stop;
	int groups, map_errors, write_errors;
};

static void *server_main(void *arg)
{
	struct server *s = arg;
	struct iommu_hwpt_pgfault rec[64];

	while (!s->stop) {
		struct pollfd p = { .fd = s->e->fault_fd, .events = POLLIN };
		if (poll(&p, 1, 20) != 1)
			continue;
		ssize_t n = read(s->e->fault_fd, rec, sizeof(rec));
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(rec[0]); i++) {
			struct iommu_ioas_map m = {
				.size = sizeof(m), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | MAP_RW,
				.ioas_id = s->e->ioas, .user_va = (uintptr_t)rec, .length = PAGE,
				.iova = rec[i].addr,
			};
			if (ioctl(s->e->iommufd, IOMMU_IOAS_MAP, &m) && errno != EEXIST)
				s->map_errors++;
			if (rec[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE) {
				if (t_respond(s->e->fault_fd, rec[i].cookie, 0) != 8)
					s->write_errors++;
				s->groups++;
			}
		}
	}
	return NULL;
}

TEST(threads_transfers_fault_loop_and_ioctls_at_once)
{
	struct t_env e;
	struct worker w[WORKERS];
	struct server s = { .e = &e };

	t_env_up(&e, DEV_PRI_PASID, IOMMU_HWPT_ALLOC_PASID);
	ASSERT_OK(t_attach(e.dev, e.hwpt, 1));
	ASSERT_OK(t_attach(e.dev, e.hwpt, 2));
	ASSERT_OK(pthread_create(&s.thread, NULL, server_main, &s));
	for (int i = 0; i < WORKERS; i++) {
		w[i] = (struct worker){ .dev = e.dev, .pasid = i == 0 ? -1 : i,
					.base = 0x10000000ull * (uint64_t)(i + 1) };
		ASSERT_OK(pthread_create(&w[i].thread, NULL, worker_main, &w[i]));
	}
	/* meanwhile, this thread churns objects of the same context */
	for (int i = 0; i < 50; i++) {
		uint32_t ioas = t_ioas(e.iommufd);
		t_map(e.iommufd, ioas, 0x100000, PAGE);
		struct vfio_device_info info = { .argsz = sizeof(info) };
		ASSERT_OK(ioctl(e.dev, VFIO_DEVICE_GET_INFO, &info));
		ASSERT_OK(t_destroy(e.iommufd, ioas));
	}
	for (int i = 0; i < WORKERS; i++) {
		ASSERT_OK(pthread_join(w[i].thread, NULL));
		ASSERT_EQ(w[i].ok, TRANSFERS);
	}
	s.stop = 1;
	ASSERT_OK(pthread_join(s.thread, NULL));
	ASSERT_TRUE(s.groups >= WORKERS * TRANSFERS); /* one group per transfer, at least */
	ASSERT_EQ(s.map_errors, 0);
	ASSERT_EQ(s.write_errors, 0);
	ASSERT_OK(t_detach(e.dev, 1));
	ASSERT_OK(t_detach(e.dev, 2));
	t_env_down(&e);
}
