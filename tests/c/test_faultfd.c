// SPDX-License-Identifier: MIT
/* The fault fd: records field by field, read() and write() counts, poll, threads. */
#include "ctest.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

TEST(fault_record_of_a_rid_request_field_by_field)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[4];
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	t_dma_start(&d, e.dev, -1, 0x100000, PAGE, IOPF_PERM_READ);
	ASSERT_EQ(t_read(e.fault_fd, rec, 4, 5000), 1);
	ASSERT_EQ(rec[0].flags, IOMMU_PGFAULT_FLAGS_LAST_PAGE);
	ASSERT_EQ(rec[0].dev_id, e.dev_id);
	ASSERT_EQ(rec[0].pasid, 0);
	ASSERT_TRUE(rec[0].grpid < 512);
	ASSERT_EQ(rec[0].perm, IOMMU_PGFAULT_PERM_READ);
	ASSERT_EQ(rec[0].__reserved, 0);
	ASSERT_EQ(rec[0].addr, 0x100000);
	ASSERT_EQ(rec[0].length, 0); /* no hint, as the kernel writes */
	ASSERT_NE(rec[0].cookie, 0);
	t_map(e.iommufd, e.ioas, 0x100000, PAGE);
	ASSERT_EQ(t_respond(e.fault_fd, rec[0].cookie, IOMMUFD_PAGE_RESP_SUCCESS), 8);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);
	ASSERT_EQ(d.result.faults, 1);
	ASSERT_EQ(d.result.bytes, PAGE);
	t_env_down(&e);
}

TEST(fault_record_of_a_pasid_request_carries_needs_pasid)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[8];
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, IOMMU_HWPT_ALLOC_PASID);
	ASSERT_OK(t_attach(e.dev, e.hwpt, 5));
	t_dma_start(&d, e.dev, 5, 0x200000, 2 * PAGE, IOPF_PERM_WRITE);
	size_t n = t_read(e.fault_fd, rec, 8, 5000);
	ASSERT_EQ(n, 2);
	/* PASID_VALID | NEEDS_PASID on each record, LAST_PAGE on the last (flags 5, 7) */
	ASSERT_EQ(rec[0].flags, IOMMU_PGFAULT_FLAGS_PASID_VALID | IOPF_PGFAULT_FLAGS_NEEDS_PASID);
	ASSERT_EQ(rec[1].flags, IOMMU_PGFAULT_FLAGS_PASID_VALID | IOPF_PGFAULT_FLAGS_NEEDS_PASID |
					IOMMU_PGFAULT_FLAGS_LAST_PAGE);
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(rec[i].pasid, 5);
		ASSERT_EQ(rec[i].perm, IOMMU_PGFAULT_PERM_WRITE);
		ASSERT_EQ(rec[i].addr, 0x200000 + i * PAGE);
		ASSERT_EQ(rec[i].cookie, rec[0].cookie); /* one group, one cookie */
		ASSERT_EQ(rec[i].grpid, rec[0].grpid);
	}
	t_map(e.iommufd, e.ioas, 0x200000, 2 * PAGE);
	ASSERT_EQ(t_respond(e.fault_fd, rec[1].cookie, IOMMUFD_PAGE_RESP_SUCCESS), 8);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);
	ASSERT_OK(t_detach(e.dev, 5));
	t_env_down(&e);
}

TEST(fault_read_counts_whole_groups_only)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[16];
	struct t_dma one, four;
	char byte;

	t_env_up(&e, DEV_PRI_PASID, 0);
	ASSERT_EQ(read(e.fault_fd, rec, 0), 0);
	ASSERT_ERR(ESPIPE, read(e.fault_fd, rec, 39));
	ASSERT_ERR(ESPIPE, read(e.fault_fd, rec, 41));
	ASSERT_ERR(ESPIPE, read(e.fault_fd, &byte, 1));
	double t0 = now_ms();
	ASSERT_EQ(read(e.fault_fd, rec, sizeof(rec)), 0); /* nothing pending: 0 at once */
	ASSERT_TRUE(now_ms() - t0 < 1000);

	/* a group of one record, then a group of four */
	t_dma_start(&one, e.dev, -1, 0x100000, PAGE, RW);
	ASSERT_TRUE(t_readable(e.fault_fd, 5000));
	t_dma_start(&four, e.dev, -1, 0x200000, 4 * PAGE, RW);
	/* 80 bytes: the first group fits, the second (if it came) does not */
	ASSERT_EQ(read(e.fault_fd, rec, 2 * sizeof(rec[0])), sizeof(rec[0]));
	uint32_t cookie1 = rec[0].cookie;
	ASSERT_TRUE(t_readable(e.fault_fd, 5000));
	ASSERT_EQ(read(e.fault_fd, rec, 3 * sizeof(rec[0])), 0); /* 4 records do not fit in 3 */
	ASSERT_EQ(read(e.fault_fd, rec, sizeof(rec)), 4 * sizeof(rec[0]));
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(rec[i].addr, 0x200000 + i * PAGE);
		ASSERT_EQ(rec[i].flags, i == 3 ? IOMMU_PGFAULT_FLAGS_LAST_PAGE : 0);
		ASSERT_EQ(rec[i].cookie, rec[3].cookie);
	}
	ASSERT_NE(rec[3].cookie, cookie1);
	t_map(e.iommufd, e.ioas, 0x100000, PAGE);
	t_map(e.iommufd, e.ioas, 0x200000, 4 * PAGE);
	struct iommu_hwpt_page_response r[2] = { { cookie1, 0 }, { rec[3].cookie, 0 } };
	ASSERT_EQ(write(e.fault_fd, r, sizeof(r)), sizeof(r));
	ASSERT_EQ(t_dma_join(&one), IOPF_DMA_OK);
	ASSERT_EQ(t_dma_join(&four), IOPF_DMA_OK);
	t_env_down(&e);
}

TEST(fault_read_returns_every_group_that_fits)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[16];
	struct t_dma d[3];
	size_t got = 0;
	int reads = 0;

	t_env_up(&e, DEV_PRI_PASID, 0);
	for (int i = 0; i < 3; i++)
		t_dma_start(&d[i], e.dev, -1, 0x100000 + i * 0x10000, PAGE, RW);
	/* give all three groups time to arrive, then take them in one read */
	ASSERT_TRUE(t_readable(e.fault_fd, 5000));
	usleep(500 * 1000);
	while (got < 3) {
		size_t n = t_read(e.fault_fd, rec + got, 16 - got, 5000);
		ASSERT_TRUE(n > 0);
		got += n;
		reads++;
	}
	ASSERT_EQ(got, 3);
	ASSERT_EQ(reads, 1);
	for (int i = 0; i < 3; i++) {
		t_map(e.iommufd, e.ioas, rec[i].addr, PAGE);
		ASSERT_EQ(t_respond(e.fault_fd, rec[i].cookie, 0), 8);
	}
	for (int i = 0; i < 3; i++)
		ASSERT_EQ(t_dma_join(&d[i]), IOPF_DMA_OK);
	t_env_down(&e);
}

TEST(fault_write_applies_entries_up_to_the_first_bad_one)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[8];
	struct t_dma d[2];
	uint32_t cookies[2];

	t_env_up(&e, DEV_PRI_PASID, 0);
	ASSERT_EQ(write(e.fault_fd, rec, 0), 0);
	ASSERT_ERR(ESPIPE, write(e.fault_fd, rec, 7));
	ASSERT_ERR(ESPIPE, write(e.fault_fd, rec, 12));
	struct iommu_hwpt_page_response unknown = { .cookie = 0x7fffffff, .code = 0 };
	ASSERT_ERR(EINVAL, write(e.fault_fd, &unknown, sizeof(unknown)));
	const void *volatile nowhere = (const void *)8;
	ASSERT_ERR(EFAULT, write(e.fault_fd, nowhere, 8));

	for (int i = 0; i < 2; i++) {
		t_dma_start(&d[i], e.dev, -1, 0x400000 + i * PAGE, PAGE, RW);
		ASSERT_EQ(t_read(e.fault_fd, rec, 8, 5000), 1);
		cookies[i] = rec[0].cookie;
	}
	t_map(e.iommufd, e.ioas, 0x400000, 2 * PAGE);
	/* a code userspace may not send (FAILURE = 2) is bad and takes nothing */
	struct iommu_hwpt_page_response failure = { .cookie = cookies[0], .code = 2 };
	ASSERT_ERR(EINVAL, write(e.fault_fd, &failure, sizeof(failure)));
	/* good, bad, good: the first is applied, processing stops at the second */
	struct iommu_hwpt_page_response three[3] = {
		{ cookies[0], IOMMUFD_PAGE_RESP_SUCCESS }, { 0x7fffffff, 0 },
		{ cookies[1], IOMMUFD_PAGE_RESP_SUCCESS },
	};
	ASSERT_EQ(write(e.fault_fd, three, sizeof(three)), 8);
	ASSERT_EQ(t_dma_join(&d[0]), IOPF_DMA_OK);
	/* an answered cookie is no longer pending */
	ASSERT_ERR(EINVAL, write(e.fault_fd, &three[0], 8));
	ASSERT_EQ(write(e.fault_fd, &three[2], 8), 8);
	ASSERT_EQ(t_dma_join(&d[1]), IOPF_DMA_OK);
	t_env_down(&e);
}

/* Two pages, the second inaccessible: a buffer that faults at the page boundary. */
static uint8_t *half_bad_buffer(void)
{
	uint8_t *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);

	ASSERT_TRUE(p != MAP_FAILED);
	ASSERT_OK(mprotect(p + PAGE, PAGE, PROT_NONE));
	return p;
}

TEST(fault_read_into_a_buffer_that_faults_keeps_the_group_that_did_not_fit)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[4];
	struct t_dma d[2];
	uint8_t *p = half_bad_buffer();
	/* Room for one record before the boundary, the second would land past it. */
	struct iommu_hwpt_pgfault *edge = (void *)(p + PAGE - sizeof(rec[0]));

	t_env_up(&e, DEV_PRI_PASID, 0);
	for (int i = 0; i < 2; i++) {
		t_dma_start(&d[i], e.dev, -1, 0x700000 + i * PAGE, PAGE, RW);
		ASSERT_TRUE(t_readable(e.fault_fd, 5000));
		usleep(100 * 1000); /* the first group is queued before the second comes */
	}
	/* the first group is copied, the second faults and stays queued (the kernel's
	 * fetch/restore): the bytes read so far */
	ASSERT_EQ(read(e.fault_fd, edge, 2 * sizeof(rec[0])), sizeof(rec[0]));
	uint32_t first = edge->cookie;
	ASSERT_ERR(EFAULT, read(e.fault_fd, p + PAGE, sizeof(rec[0])));
	ASSERT_EQ(t_read(e.fault_fd, rec, 4, 5000), 1);
	ASSERT_NE(rec[0].cookie, first);
	t_map(e.iommufd, e.ioas, 0x700000, 2 * PAGE);
	struct iommu_hwpt_page_response r[2] = { { first, 0 }, { rec[0].cookie, 0 } };
	ASSERT_EQ(write(e.fault_fd, r, sizeof(r)), sizeof(r));
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(t_dma_join(&d[i]), IOPF_DMA_OK);
	t_env_down(&e);
	ASSERT_OK(munmap(p, 2 * PAGE));
}

TEST(fault_write_from_a_buffer_that_faults_applies_the_readable_prefix)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[4];
	struct t_dma d[2];
	uint32_t cookies[2];
	uint8_t *p = half_bad_buffer();
	struct iommu_hwpt_page_response *edge = (void *)(p + PAGE - 8);

	t_env_up(&e, DEV_PRI_PASID, 0);
	for (int i = 0; i < 2; i++) {
		t_dma_start(&d[i], e.dev, -1, 0x800000 + i * PAGE, PAGE, RW);
		ASSERT_EQ(t_read(e.fault_fd, rec, 4, 5000), 1);
		cookies[i] = rec[0].cookie;
	}
	t_map(e.iommufd, e.ioas, 0x800000, 2 * PAGE);
	*edge = (struct iommu_hwpt_page_response){ cookies[0], IOMMUFD_PAGE_RESP_SUCCESS };
	/* three entries, the last two past the boundary: the first is applied */
	ASSERT_EQ(write(e.fault_fd, edge, 24), 8);
	ASSERT_EQ(t_dma_join(&d[0]), IOPF_DMA_OK);
	ASSERT_ERR(EFAULT, write(e.fault_fd, p + PAGE, 8));
	ASSERT_EQ(t_respond(e.fault_fd, cookies[1], IOMMUFD_PAGE_RESP_SUCCESS), 8);
	ASSERT_EQ(t_dma_join(&d[1]), IOPF_DMA_OK);
	t_env_down(&e);
	ASSERT_OK(munmap(p, 2 * PAGE));
}

TEST(fault_poll_and_epoll_wake_on_a_group)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[8];
	struct t_dma d;
	struct epoll_event ev = { .events = EPOLLIN }, out;

	t_env_up(&e, DEV_PRI_PASID, 0);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	ASSERT_OK(epoll_ctl(ep, EPOLL_CTL_ADD, e.fault_fd, &ev));
	struct pollfd p = { .fd = e.fault_fd, .events = POLLIN };
	ASSERT_EQ(poll(&p, 1, 0), 0);
	ASSERT_EQ(epoll_wait(ep, &out, 1, 0), 0);

	t_dma_start(&d, e.dev, -1, 0x500000, PAGE, RW);
	p.revents = 0;
	ASSERT_EQ(poll(&p, 1, 5000), 1); /* sleeps until the group is queued */
	ASSERT_TRUE(p.revents & POLLIN);
	ASSERT_EQ(epoll_wait(ep, &out, 1, 5000), 1);
	ASSERT_TRUE(out.events & EPOLLIN);
	ASSERT_EQ(t_read(e.fault_fd, rec, 8, 0), 1);
	/* read but unanswered: no longer readable (only the deliver list counts) */
	p.events = POLLIN | POLLOUT, p.revents = 0;
	ASSERT_EQ(poll(&p, 1, 0), 1);
	ASSERT_EQ(p.revents, POLLOUT);
	t_map(e.iommufd, e.ioas, 0x500000, PAGE);
	ASSERT_EQ(t_respond(e.fault_fd, rec[0].cookie, 0), 8);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);
	ASSERT_OK(close(ep));
	t_env_down(&e);
}

TEST(fault_invalid_answer_ends_the_dma_invalid)
{
	struct t_env e;
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	t_dma_start(&d, e.dev, -1, 0x600000, 2 * PAGE, RW);
	ASSERT_EQ(t_serve(&e, &d, IOMMUFD_PAGE_RESP_INVALID), 1);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_INVALID);
	t_env_down(&e);
}

TEST(fault_ioctls_run_while_a_dma_waits_for_its_answer)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[8];
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	t_dma_start(&d, e.dev, -1, 0x700000, PAGE, RW);
	ASSERT_EQ(t_read(e.fault_fd, rec, 8, 5000), 1);
	/* the transfer is parked in iopf_dma(); the same context keeps serving */
	for (int i = 0; i < 20; i++) {
		uint32_t ioas = t_ioas(e.iommufd);
		t_map(e.iommufd, ioas, 0x10000, PAGE);
		ASSERT_OK(t_destroy(e.iommufd, ioas));
	}
	struct vfio_device_info info = { .argsz = sizeof(info) };
	ASSERT_OK(ioctl(e.dev, VFIO_DEVICE_GET_INFO, &info));
	ASSERT_EQ(__atomic_load_n(&d.done, __ATOMIC_ACQUIRE), 0);
	t_map(e.iommufd, e.ioas, 0x700000, PAGE);
	ASSERT_EQ(t_respond(e.fault_fd, rec[0].cookie, 0), 8);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);
	t_env_down(&e);
}

TEST(fault_detach_answers_pending_groups_invalid)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[8];
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	t_dma_start(&d, e.dev, -1, 0x800000, PAGE, RW);
	ASSERT_EQ(t_read(e.fault_fd, rec, 8, 5000), 1);
	ASSERT_OK(t_detach(e.dev, -1)); /* iommufd_auto_response_faults() */
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_INVALID);
	ASSERT_ERR(EINVAL, t_respond(e.fault_fd, rec[0].cookie, 0));
	ASSERT_OK(t_attach(e.dev, e.hwpt, -1));
	t_env_down(&e);
}

TEST(fault_fd_closed_early_leaves_groups_to_the_queue)
{
	struct t_env e;
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	t_dma_start(&d, e.dev, -1, 0x900000, PAGE, RW);
	ASSERT_TRUE(t_readable(e.fault_fd, 5000));
	ASSERT_OK(close(e.fault_fd)); /* not an answer: the group stays pending */
	usleep(100 * 1000);
	ASSERT_EQ(__atomic_load_n(&d.done, __ATOMIC_ACQUIRE), 0);
	ASSERT_OK(t_detach(e.dev, -1)); /* the queue's HWPT goes: INVALID */
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_INVALID);
	ASSERT_OK(t_destroy(e.iommufd, e.hwpt));
	ASSERT_OK(t_destroy(e.iommufd, e.fault_id));
	ASSERT_OK(close(e.dev));
	ASSERT_OK(close(e.iommufd));
}

TEST(fault_fd_outlives_the_closed_iommufd)
{
	struct t_env e;
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	int ioas_fd = e.iommufd;
	t_map(ioas_fd, e.ioas, 0xa00000, PAGE);
	ASSERT_OK(close(ioas_fd)); /* the device and the fault fd hold the context */
	t_dma_start(&d, e.dev, -1, 0xa01000, PAGE, RW);
	struct iommu_hwpt_pgfault rec[4];
	ASSERT_EQ(t_read(e.fault_fd, rec, 4, 5000), 1);
	ASSERT_EQ(t_respond(e.fault_fd, rec[0].cookie, IOMMUFD_PAGE_RESP_INVALID), 8);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_INVALID);
	ASSERT_EQ(iopf_dma(e.dev, -1, 0xa00000, PAGE, RW), IOPF_DMA_OK);
	ASSERT_OK(close(e.fault_fd));
	ASSERT_OK(close(e.dev));
}

TEST(fault_nested_hwpt_reports_the_iova_and_maps_both_stages)
{
	int fd = t_iommufd(), ffd;
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, fd);
	uint32_t fault = t_fault(fd, &ffd);
	uint32_t parent = t_hwpt(fd, dev_id, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0);
	uint32_t nested = t_nested(fd, dev_id, parent, IOMMU_HWPT_FAULT_ID_VALID, fault);
	struct iommu_hwpt_pgfault rec[4];
	struct t_dma d;

	ASSERT_OK(t_attach(dev, nested, -1));
	t_dma_start(&d, dev, -1, 0x40000000, PAGE, RW);
	ASSERT_EQ(t_read(ffd, rec, 4, 5000), 1);
	ASSERT_EQ(rec[0].addr, 0x40000000); /* the guest's iova, not the gpa */
	/* the guest's page table, then the host's: iova -> gpa 0x1000000 -> IOAS */
	ASSERT_OK(iopf_s1_map(fd, nested, 0x40000000, PAGE, 0x1000000, RW));
	t_map(fd, ioas, 0x1000000, PAGE);
	ASSERT_EQ(t_respond(ffd, rec[0].cookie, 0), 8);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);
	ASSERT_OK(close(ffd));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(fault_many_transfers_one_fault_loop)
{
	struct t_env e;
	struct t_dma d[6];
	struct iommu_hwpt_pgfault rec[64];
	int done = 0, groups = 0;

	t_env_up(&e, DEV_PRI_PASID, IOMMU_HWPT_ALLOC_PASID);
	ASSERT_OK(t_attach(e.dev, e.hwpt, 1));
	ASSERT_OK(t_attach(e.dev, e.hwpt, 2));
	for (int i = 0; i < 6; i++)
		t_dma_start(&d[i], e.dev, i % 3 == 0 ? -1 : i % 3, 0x1000000 + i * 0x100000,
			    4 * PAGE, RW);
	while (done < 6) {
		size_t n = t_read(e.fault_fd, rec, 64, 50);
		for (size_t i = 0; i < n; i++) {
			struct iommu_ioas_map m = {
				.size = sizeof(m), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | MAP_RW,
				.ioas_id = e.ioas, .user_va = (uintptr_t)rec, .length = PAGE,
				.iova = rec[i].addr,
			};
			int rc = ioctl(e.iommufd, IOMMU_IOAS_MAP, &m);
			ASSERT_TRUE(rc == 0 || errno == EEXIST);
			if (rec[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE) {
				ASSERT_EQ(t_respond(e.fault_fd, rec[i].cookie, 0), 8);
				groups++;
			}
		}
		done = 0;
		for (int i = 0; i < 6; i++)
			done += __atomic_load_n(&d[i].done, __ATOMIC_ACQUIRE);
	}
	for (int i = 0; i < 6; i++)
		ASSERT_EQ(t_dma_join(&d[i]), IOPF_DMA_OK);
	ASSERT_TRUE(groups >= 6);
	ASSERT_OK(t_detach(e.dev, 1));
	ASSERT_OK(t_detach(e.dev, 2));
	t_env_down(&e);
}

TEST(fault_fd_from_the_daemon)
{
	t_need("fault_fd");
	/* no event delivery fallback: the fd must be the daemon's */
	setenv("IOPF_FAULT_FD", "daemon", 1);
	struct t_env e;
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	t_dma_start(&d, e.dev, -1, 0xb00000, 4 * PAGE, RW);
	ASSERT_EQ(t_serve(&e, &d, IOMMUFD_PAGE_RESP_SUCCESS), 1);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);
	t_env_down(&e);
}

/*
 * Against tests/c's stand-in daemon only (test_c_uapi.py runs the `standin_` cases
 * there): the `fault_fd` op as the daemon will serve it. The stand-in queues two
 * groups (one record, cookie 1; two records, cookie 2) in its end of the socketpair
 * before it passes the other end with the reply, and applies page_response as v2 says.
 */
TEST(standin_fault_fd_packets_and_answers)
{
	struct iommu_hwpt_pgfault rec[4];
	int fd, ffd;

	setenv("IOPF_FAULT_FD", "daemon", 1);
	fd = t_iommufd();
	ASSERT_EQ(t_fault(fd, &ffd), 7);
	ASSERT_TRUE(t_readable(ffd, 5000));
	/* 80 bytes: the one-record group fits, the two-record group then does not */
	ASSERT_EQ(read(ffd, rec, 2 * sizeof(rec[0])), sizeof(rec[0]));
	ASSERT_EQ(rec[0].flags, IOMMU_PGFAULT_FLAGS_LAST_PAGE);
	ASSERT_EQ(rec[0].dev_id, 3);
	ASSERT_EQ(rec[0].grpid, 11);
	ASSERT_EQ(rec[0].perm, IOMMU_PGFAULT_PERM_READ);
	ASSERT_EQ(rec[0].addr, 0x1000);
	ASSERT_EQ(rec[0].cookie, 1);
	ASSERT_EQ(read(ffd, rec, sizeof(rec[0])), 0);
	ASSERT_EQ(read(ffd, rec, sizeof(rec)), 2 * sizeof(rec[0]));
	ASSERT_EQ(rec[0].flags, IOMMU_PGFAULT_FLAGS_PASID_VALID | IOPF_PGFAULT_FLAGS_NEEDS_PASID);
	ASSERT_EQ(rec[1].flags, IOMMU_PGFAULT_FLAGS_PASID_VALID | IOPF_PGFAULT_FLAGS_NEEDS_PASID |
					IOMMU_PGFAULT_FLAGS_LAST_PAGE);
	ASSERT_EQ(rec[1].pasid, 9);
	ASSERT_EQ(rec[1].addr, 0xfffff000);
	ASSERT_EQ(rec[1].cookie, 2);
	struct pollfd p = { .fd = ffd, .events = POLLIN | POLLOUT };
	ASSERT_EQ(poll(&p, 1, 0), 1);
	ASSERT_EQ(p.revents, POLLOUT);
	struct iommu_hwpt_page_response r[2] = { { 1, 0 }, { 99, 0 } };
	ASSERT_EQ(write(ffd, r, sizeof(r)), 8);
	ASSERT_ERR(EINVAL, write(ffd, r, sizeof(r))); /* cookie 1 is answered */
	r[0] = (struct iommu_hwpt_page_response){ 2, 1 };
	ASSERT_EQ(write(ffd, r, 8), 8);
	ASSERT_ERR(EBUSY, t_destroy(fd, 7)); /* the fd holds the queue */
	ASSERT_OK(close(ffd));
	ASSERT_OK(t_destroy(fd, 7));
	ASSERT_OK(close(fd));
}
