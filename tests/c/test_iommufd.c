// SPDX-License-Identifier: MIT
/* /dev/iommu: every ioctl served, with good and bad input, against the kernel's rules. */
#include "ctest.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Sends @cmd with its leading size set to @size (the rest of @buf is the caller's). */
static int ioctl_sized(int fd, unsigned long cmd, void *buf, uint32_t size)
{
	memcpy(buf, &size, sizeof(size));
	return ioctl(fd, cmd, buf);
}

TEST(iommufd_read_write_and_unknown_ioctls_fail_as_on_the_kernel)
{
	int fd = t_iommufd();
	char buf[8] = { 0 };

	ASSERT_ERR(EINVAL, read(fd, buf, sizeof(buf)));
	ASSERT_ERR(EINVAL, write(fd, buf, sizeof(buf)));
	ASSERT_ERR(ENOTTY, ioctl(fd, IOPF_IO(';', 0xff), buf));
	ASSERT_ERR(ENOTTY, ioctl(fd, IOPF_IO(';', IOMMUFD_CMD_VFIO_IOAS), buf));
	ASSERT_ERR(ENOTTY, ioctl(fd, IOPF_IO('Q', IOMMUFD_CMD_IOAS_ALLOC), buf));
	ASSERT_ERR(ENOTTY, ioctl(fd, VFIO_DEVICE_GET_INFO, buf));
	/* do_vfs_ioctl() answers these for any file */
	ASSERT_OK(ioctl(fd, FIONCLEX));
	ASSERT_EQ(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
	ASSERT_OK(ioctl(fd, FIOCLEX));
	ASSERT_EQ(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	ASSERT_OK(close(fd));
}

TEST(ioas_alloc_size_flags_and_bad_pointer)
{
	int fd = t_iommufd();
	struct {
		struct iommu_ioas_alloc cmd;
		uint32_t tail;
	} big = { { 0 }, 0 };
	struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };

	ASSERT_OK(ioctl(fd, IOMMU_IOAS_ALLOC, &cmd));
	uint32_t first = cmd.out_ioas_id;
	ASSERT_NE(first, 0);
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_ALLOC, &cmd));
	ASSERT_NE(cmd.out_ioas_id, first);
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_IOAS_ALLOC, &cmd, 8));
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_IOAS_ALLOC, &cmd, 0));
	ASSERT_OK(ioctl_sized(fd, IOMMU_IOAS_ALLOC, &big, sizeof(big)));
	ASSERT_NE(big.cmd.out_ioas_id, 0);
	big.tail = 1;
	ASSERT_ERR(E2BIG, ioctl_sized(fd, IOMMU_IOAS_ALLOC, &big, sizeof(big)));
	cmd = (struct iommu_ioas_alloc){ .size = sizeof(cmd), .flags = 1 };
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_IOAS_ALLOC, &cmd));
	ASSERT_ERR(EFAULT, ioctl(fd, IOMMU_IOAS_ALLOC, NULL));
	ASSERT_ERR(EFAULT, ioctl(fd, IOMMU_IOAS_ALLOC, (void *)16));
	ASSERT_OK(close(fd));
}

TEST(ioas_map_fixed_iova_rules)
{
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	static char mem[4 * PAGE] __attribute__((aligned(PAGE)));
	struct iommu_ioas_map m = {
		.size = sizeof(m), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | MAP_RW, .ioas_id = ioas,
		.user_va = (uintptr_t)mem, .length = 2 * PAGE, .iova = 0x100000,
	};
	struct iommu_ioas_map bad;

	ASSERT_OK(ioctl(fd, IOMMU_IOAS_MAP, &m));
	ASSERT_EQ(m.iova, 0x100000);
	/* read-only and write-only are mappings too */
	bad = m, bad.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE, bad.iova = 0x200000;
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.flags = IOMMU_IOAS_MAP_FIXED_IOVA;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.flags |= 1u << 3;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.__reserved = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.ioas_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	/* iopt_check_iova(): an existing area may not be overlapped, even in part */
	ASSERT_ERR(EEXIST, ioctl(fd, IOMMU_IOAS_MAP, &m));
	bad = m, bad.iova = 0x101000;
	ASSERT_ERR(EEXIST, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.iova = 0x0ff000;
	ASSERT_ERR(EEXIST, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.iova = 0x300800;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.iova = 0x300000, bad.length = 0;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.iova = 0x300000, bad.length = PAGE + 1;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.iova = 0 - PAGE, bad.length = 2 * PAGE;
	ASSERT_ERR(EOVERFLOW, ioctl(fd, IOMMU_IOAS_MAP, &bad));
	bad = m, bad.iova = 0x300000;
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_IOAS_MAP, &bad, 32));
	struct {
		struct iommu_ioas_map m;
		uint64_t tail;
	} big = { m, 7 };
	big.m.iova = 0x300000;
	ASSERT_ERR(E2BIG, ioctl_sized(fd, IOMMU_IOAS_MAP, &big, sizeof(big)));
	big.tail = 0;
	ASSERT_OK(ioctl_sized(fd, IOMMU_IOAS_MAP, &big, sizeof(big)));
	ASSERT_OK(close(fd));
}

TEST(ioas_map_without_fixed_iova_lets_the_kernel_choose)
{
	t_need("auto_iova");
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	static char mem[2 * PAGE] __attribute__((aligned(PAGE)));
	struct iommu_ioas_map a = {
		.size = sizeof(a), .flags = MAP_RW, .ioas_id = ioas, .user_va = (uintptr_t)mem,
		.length = 2 * PAGE, .iova = 0xdead000,
	};
	struct iommu_ioas_map b = a;

	ASSERT_OK(ioctl(fd, IOMMU_IOAS_MAP, &a));
	ASSERT_EQ(a.iova % PAGE, 0);
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_MAP, &b));
	ASSERT_TRUE(b.iova + b.length <= a.iova || a.iova + a.length <= b.iova);
	/* what the kernel chose is an area like any other */
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = a.iova,
				      .length = a.length };
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	ASSERT_EQ(u.length, 2 * PAGE);
	ASSERT_OK(close(fd));
}

TEST(ioas_unmap_takes_whole_areas_only)
{
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas };

	t_map(fd, ioas, 0x10000, 2 * PAGE);
	t_map(fd, ioas, 0x20000, PAGE);
	u.iova = 0x10000, u.length = PAGE; /* would split the first area */
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	u.iova = 0x40000, u.length = PAGE; /* nothing there */
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	u.iova = 0x10000, u.length = 0;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	u.iova = 0 - PAGE, u.length = 2 * PAGE;
	ASSERT_ERR(EOVERFLOW, ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	u.ioas_id = 0xfffff, u.iova = 0x10000, u.length = PAGE;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	u.ioas_id = ioas;
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_IOAS_UNMAP, &u, 16));
	struct {
		struct iommu_ioas_unmap u;
		uint32_t tail;
	} big = { { .ioas_id = ioas, .iova = 0x10000, .length = 2 * PAGE }, 1 };
	ASSERT_ERR(E2BIG, ioctl_sized(fd, IOMMU_IOAS_UNMAP, &big, sizeof(big)));
	/* a range covering both areas, and the gap between them */
	u.size = sizeof(u), u.iova = 0x8000, u.length = 0x20000;
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	ASSERT_EQ(u.length, 3 * PAGE);
	u.iova = 0x8000, u.length = 0x20000;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	/* 0..U64_MAX: everything, and on an empty IOAS that works too */
	t_map(fd, ioas, 0x10000, PAGE);
	t_map(fd, ioas, 0x7000000, 4 * PAGE);
	u.iova = 0, u.length = UINT64_MAX;
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	ASSERT_EQ(u.length, 5 * PAGE);
	u.iova = 0, u.length = UINT64_MAX;
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_UNMAP, &u));
	ASSERT_EQ(u.length, 0);
	/* what was unmapped can be mapped again */
	t_map(fd, ioas, 0x10000, 2 * PAGE);
	ASSERT_OK(close(fd));
}

TEST(destroy_refuses_objects_in_use)
{
	struct t_env e;
	uint32_t spare;

	t_env_up(&e, DEV_PRI_PASID, 0);
	spare = t_ioas(e.iommufd);
	ASSERT_ERR(EBUSY, t_destroy(e.iommufd, e.ioas));     /* under a HWPT */
	ASSERT_ERR(EBUSY, t_destroy(e.iommufd, e.hwpt));     /* attached */
	ASSERT_ERR(EBUSY, t_destroy(e.iommufd, e.fault_id)); /* its fd is open, a HWPT uses it */
	ASSERT_OK(t_destroy(e.iommufd, spare));
	ASSERT_ERR(ENOENT, t_destroy(e.iommufd, spare));
	ASSERT_ERR(ENOENT, t_destroy(e.iommufd, 0xfffff));
	struct iommu_destroy d = { .id = spare };
	ASSERT_ERR(EINVAL, ioctl_sized(e.iommufd, IOMMU_DESTROY, &d, 4));
	struct {
		struct iommu_destroy d;
		uint32_t tail;
	} big = { { .id = e.ioas }, 1 };
	ASSERT_ERR(E2BIG, ioctl_sized(e.iommufd, IOMMU_DESTROY, &big, sizeof(big)));
	ASSERT_OK(t_detach(e.dev, -1));
	ASSERT_OK(t_destroy(e.iommufd, e.hwpt));
	/* no HWPT uses the fault queue now, but its fd is still open */
	ASSERT_ERR(EBUSY, t_destroy(e.iommufd, e.fault_id));
	ASSERT_OK(close(e.fault_fd));
	ASSERT_OK(t_destroy(e.iommufd, e.fault_id));
	ASSERT_OK(t_destroy(e.iommufd, e.ioas));
	ASSERT_OK(close(e.dev));
	ASSERT_OK(close(e.iommufd));
}

TEST(fault_queue_alloc_rules_and_the_new_fd)
{
	int fd = t_iommufd(), ffd;
	struct iommu_fault_alloc cmd = { .size = sizeof(cmd) };
	char buf[400];

	uint32_t id = t_fault(fd, &ffd);
	ASSERT_TRUE(ffd > 2);
	ASSERT_EQ(fcntl(ffd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC); /* O_CLOEXEC, as the kernel */
	ASSERT_EQ(read(ffd, buf, sizeof(buf)), 0);                 /* nothing pending, no block */
	struct pollfd p = { .fd = ffd, .events = POLLIN | POLLOUT };
	ASSERT_EQ(poll(&p, 1, 0), 1);
	ASSERT_EQ(p.revents, POLLOUT);
	ASSERT_ERR(ENOTTY, ioctl(ffd, IOMMU_IOAS_ALLOC, &cmd)); /* the fault fd has no ioctl */
	cmd.flags = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &cmd));
	cmd.flags = 0;
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_FAULT_QUEUE_ALLOC, &cmd, 12));
	struct {
		struct iommu_fault_alloc f;
		uint64_t tail;
	} big = { { 0 }, 1 };
	ASSERT_ERR(E2BIG, ioctl_sized(fd, IOMMU_FAULT_QUEUE_ALLOC, &big, sizeof(big)));
	ASSERT_OK(close(ffd));
	ASSERT_OK(t_destroy(fd, id));
	ASSERT_OK(close(fd));
}

TEST(hwpt_alloc_paging_rules)
{
	int fd = t_iommufd(), ffd;
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, fd);
	uint32_t fault = t_fault(fd, &ffd);
	struct iommu_hwpt_alloc good = {
		.size = sizeof(good), .flags = IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID,
		.dev_id = dev_id, .pt_id = ioas, .fault_id = fault,
	};
	struct iommu_hwpt_alloc c;

	c = good;
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	ASSERT_NE(c.out_hwpt_id, 0);
	ASSERT_NE(c.out_hwpt_id, ioas);
	/* the struct as it was before data and fault_id (min_size ends at __reserved) */
	c = good, c.flags = 0;
	ASSERT_OK(ioctl_sized(fd, IOMMU_HWPT_ALLOC, &c, 24));
	ASSERT_NE(c.out_hwpt_id, 0);
	c = good;
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_HWPT_ALLOC, &c, 20));
	struct {
		struct iommu_hwpt_alloc h;
		uint64_t tail;
	} big = { good, 1 };
	ASSERT_ERR(E2BIG, ioctl_sized(fd, IOMMU_HWPT_ALLOC, &big, sizeof(big)));
	c = good, c.flags |= 1u << 31;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.flags = IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.flags = IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_NEST_PARENT;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.fault_id = UINT32_MAX;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.__reserved = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.data_len = 8; /* DATA_NONE with data */
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.dev_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.pt_id = 0xfffff; /* iommufd_get_object() fails: EINVAL, not ENOENT */
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.pt_id = fault; /* an object, but neither an IOAS nor a HWPT */
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	/* a fault queue without FAULT_ID_VALID is not looked at */
	c = good, c.flags = 0, c.fault_id = UINT32_MAX;
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	ASSERT_OK(close(ffd));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(hwpt_alloc_nested_vtd_s1_rules)
{
	int fd = t_iommufd(), ffd;
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, fd);
	uint32_t fault = t_fault(fd, &ffd);
	uint32_t parent = t_hwpt(fd, dev_id, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0);
	uint32_t paging = t_hwpt(fd, dev_id, ioas, 0, 0);
	struct {
		struct iommu_hwpt_vtd_s1 s1;
		uint64_t tail;
	} data = { { .addr_width = 48 }, 0 };
	struct iommu_hwpt_alloc good = {
		.size = sizeof(good), .flags = IOMMU_HWPT_FAULT_ID_VALID, .dev_id = dev_id,
		.pt_id = parent, .data_type = IOMMU_HWPT_DATA_VTD_S1,
		.data_len = sizeof(data.s1), .data_uptr = (uintptr_t)&data, .fault_id = fault,
	};
	struct iommu_hwpt_alloc c;

	c = good;
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.flags |= IOMMU_HWPT_ALLOC_PASID;
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.data_len = sizeof(data); /* a larger struct with a zero tail */
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	data.tail = 1;
	ASSERT_ERR(E2BIG, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	data.tail = 0;
	c = good, c.data_len = 16; /* shorter than the driver's struct */
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.data_uptr = 8;
	ASSERT_ERR(EFAULT, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	/* the driver copies its data before the fault queue is looked up */
	c = good, c.data_len = 16, c.fault_id = UINT32_MAX;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.data_len = 0;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.data_type = 99;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.flags |= IOMMU_HWPT_ALLOC_NEST_PARENT; /* nested: FAULT_ID_VALID, PASID only */
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	c = good, c.pt_id = paging; /* not a nesting parent */
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_ALLOC, &c));
	ASSERT_OK(close(ffd));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(hwpt_invalidate_vtd_s1_rules)
{
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, fd);
	uint32_t parent = t_hwpt(fd, dev_id, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0);
	uint32_t nested = t_nested(fd, dev_id, parent, 0, 0);
	struct {
		struct iommu_hwpt_vtd_s1_invalidate inv;
		uint64_t tail;
	} wide[2] = { { { .addr = 0x1000, .npages = 1 }, 0 }, { { .addr = 0x2000, .npages = 2 }, 0 } };
	struct iommu_hwpt_vtd_s1_invalidate inv[3] = {
		{ .addr = 0x10000, .npages = 4 },
		{ .addr = 0, .npages = UINT64_MAX }, /* everything */
		{ .addr = 0x20000, .npages = 1, .flags = IOMMU_VTD_INV_FLAGS_LEAF },
	};
	struct iommu_hwpt_invalidate good = {
		.size = sizeof(good), .hwpt_id = nested, .data_uptr = (uintptr_t)inv,
		.data_type = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, .entry_len = sizeof(inv[0]),
		.entry_num = 3,
	};
	struct iommu_hwpt_invalidate c;

	c = good;
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 3);
	c = good, c.entry_num = 0; /* checks that the type is supported */
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 0);
	c = good, c.data_type = IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 0);
	/* processing stops at a bad entry; entry_num says how many were handled */
	inv[1].flags = 2;
	c = good;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 1);
	inv[1].flags = 0, inv[1].__reserved = 1;
	c = good;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 1);
	inv[1].__reserved = 0, inv[1].addr = 0x1000; /* npages U64_MAX needs addr 0 */
	c = good;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 1);
	inv[1].addr = 0, inv[2].addr = 0x20800; /* not 4 KiB aligned */
	c = good;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 2);
	inv[2].addr = 0x20000;
	c = good, c.entry_len = 16;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 0);
	c = good, c.data_uptr = 0;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	c = good, c.__reserved = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	c = good, c.hwpt_id = parent; /* not a nested HWPT */
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	c = good, c.hwpt_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_HWPT_INVALIDATE, &c, 28));
	struct {
		struct iommu_hwpt_invalidate h;
		uint32_t tail;
	} bigcmd = { good, 1 };
	ASSERT_ERR(E2BIG, ioctl_sized(fd, IOMMU_HWPT_INVALIDATE, &bigcmd, sizeof(bigcmd)));
	/* entries larger than the driver's struct: zero beyond it, or E2BIG */
	c = good, c.data_uptr = (uintptr_t)wide, c.entry_len = sizeof(wide[0]), c.entry_num = 2;
	ASSERT_OK(ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 2);
	wide[1].tail = 1;
	c = good, c.data_uptr = (uintptr_t)wide, c.entry_len = sizeof(wide[0]), c.entry_num = 2;
	ASSERT_ERR(E2BIG, ioctl(fd, IOMMU_HWPT_INVALIDATE, &c));
	ASSERT_EQ(c.entry_num, 1);
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(get_hw_info_reports_the_vtd_unit_and_pasid_width)
{
	t_need("hw_info");
	int fd = t_iommufd();
	int dev = t_dev(DEV_PRI_PASID), dev2 = t_dev(DEV_PRI_NO_PASID);
	uint32_t dev_id = t_bind(dev, fd), dev2_id = t_bind(dev2, fd);
	struct iommu_hw_info_vtd vtd;
	uint8_t wide[64];
	struct iommu_hw_info good = {
		.size = sizeof(good), .dev_id = dev_id, .data_len = sizeof(vtd),
		.data_uptr = (uintptr_t)&vtd,
	};
	struct iommu_hw_info c;

	memset(&vtd, 0xff, sizeof(vtd));
	c = good;
	ASSERT_OK(ioctl(fd, IOMMU_GET_HW_INFO, &c));
	ASSERT_EQ(c.out_data_type, IOMMU_HW_INFO_TYPE_INTEL_VTD);
	ASSERT_EQ(c.data_len, sizeof(vtd));
	ASSERT_EQ(c.out_max_pasid_log2, 20);
	ASSERT_EQ(c.out_capabilities, 0);
	ASSERT_NE(vtd.cap_reg, 0);
	ASSERT_NE(vtd.ecap_reg, 0);
	ASSERT_EQ(vtd.__reserved, 0);
	c = good, c.dev_id = dev2_id;
	ASSERT_OK(ioctl(fd, IOMMU_GET_HW_INFO, &c));
	ASSERT_EQ(c.out_max_pasid_log2, 0);
	/* a larger buffer: the rest is zeroed; a smaller one: only what fits */
	memset(wide, 0xff, sizeof(wide));
	c = good, c.data_len = sizeof(wide), c.data_uptr = (uintptr_t)wide;
	ASSERT_OK(ioctl(fd, IOMMU_GET_HW_INFO, &c));
	ASSERT_EQ(c.data_len, sizeof(vtd));
	for (size_t i = sizeof(vtd); i < sizeof(wide); i++)
		ASSERT_EQ(wide[i], 0);
	memset(wide, 0xff, sizeof(wide));
	c = good, c.data_len = 4, c.data_uptr = (uintptr_t)wide;
	ASSERT_OK(ioctl(fd, IOMMU_GET_HW_INFO, &c));
	ASSERT_EQ(c.data_len, sizeof(vtd));
	ASSERT_EQ(wide[4], 0xff);
	c = good, c.data_len = 0, c.data_uptr = 0;
	ASSERT_OK(ioctl(fd, IOMMU_GET_HW_INFO, &c));
	ASSERT_EQ(c.data_len, sizeof(vtd));
	c = good, c.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE, c.in_data_type = IOMMU_HW_INFO_TYPE_INTEL_VTD;
	ASSERT_OK(ioctl(fd, IOMMU_GET_HW_INFO, &c));
	c = good, c.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE, c.in_data_type = IOMMU_HW_INFO_TYPE_ARM_SMMUV3;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_GET_HW_INFO, &c));
	c = good, c.flags = 2;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_GET_HW_INFO, &c));
	c = good, c.__reserved[1] = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_GET_HW_INFO, &c));
	c = good, c.dev_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_GET_HW_INFO, &c));
	c = good;
	ASSERT_ERR(EINVAL, ioctl_sized(fd, IOMMU_GET_HW_INFO, &c, 28));
	struct {
		struct iommu_hw_info h;
		uint64_t tail;
	} big = { good, 1 };
	ASSERT_ERR(E2BIG, ioctl_sized(fd, IOMMU_GET_HW_INFO, &big, sizeof(big)));
	c = good; /* the struct before out_capabilities */
	ASSERT_OK(ioctl_sized(fd, IOMMU_GET_HW_INFO, &c, 32));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(dev2));
	ASSERT_OK(close(fd));
}

TEST(ids_of_another_iommufd_do_not_exist_here)
{
	int a = t_iommufd(), b = t_iommufd();
	uint32_t ioas_a = t_ioas(a), ioas_b = t_ioas(b);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, a);
	struct iommu_ioas_map m = {
		.size = sizeof(m), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | MAP_RW, .ioas_id = ioas_a,
		.user_va = 0x10000, .length = PAGE, .iova = 0x10000,
	};
	struct iommu_hwpt_alloc h = { .size = sizeof(h), .dev_id = dev_id, .pt_id = ioas_b };

	ASSERT_ERR(ENOENT, ioctl(b, IOMMU_IOAS_MAP, &m));
	ASSERT_ERR(ENOENT, t_destroy(b, ioas_a));
	ASSERT_ERR(ENOENT, ioctl(b, IOMMU_HWPT_ALLOC, &h)); /* the device is bound to a */
	h.pt_id = ioas_a;
	ASSERT_ERR(ENOENT, ioctl(b, IOMMU_HWPT_ALLOC, &h));
	ASSERT_OK(ioctl(a, IOMMU_HWPT_ALLOC, &h));
	ASSERT_OK(t_attach(dev, h.out_hwpt_id, -1));
	ASSERT_OK(t_destroy(b, ioas_b));
	ASSERT_OK(close(b));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(a));
}

TEST(closing_the_iommufd_keeps_what_a_bound_device_holds)
{
	int a = t_iommufd(), b = t_iommufd();
	int dev = t_dev(DEV_PRI_PASID), again = t_dev(DEV_PRI_PASID);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = b };

	t_bind(dev, a);
	ASSERT_OK(close(a)); /* the device holds a's context (vfio's iommufd_ctx_get) */
	ASSERT_ERR(EINVAL, ioctl(again, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	ASSERT_OK(close(dev)); /* now the function is free */
	ASSERT_OK(ioctl(again, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	ASSERT_OK(close(again));
	ASSERT_OK(close(b));
}

TEST(stage1_entries_of_a_nested_hwpt_translate_dma)
{
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, fd);
	uint32_t parent = t_hwpt(fd, dev_id, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0);
	uint32_t nested = t_nested(fd, dev_id, parent, 0, 0);
	uint64_t unmapped = 0;

	ASSERT_OK(t_attach(dev, nested, -1));
	/* iova 0x400000 -> gpa 0x800000 -> the IOAS */
	ASSERT_OK(iopf_s1_map(fd, nested, 0x400000, 2 * PAGE, 0x800000, RW));
	t_map(fd, ioas, 0x800000, 2 * PAGE);
	ASSERT_EQ(iopf_dma(dev, -1, 0x400000, 2 * PAGE, RW), IOPF_DMA_OK);
	/* no fault-capable HWPT: a miss is answered INVALID (6.18 has PRI on from probe) */
	ASSERT_EQ(iopf_dma(dev, -1, 0x500000, PAGE, IOPF_PERM_READ), IOPF_DMA_INVALID);
	ASSERT_OK(iopf_s1_unmap(fd, nested, 0x400000, 2 * PAGE, &unmapped));
	ASSERT_EQ(unmapped, 2 * PAGE);
	ASSERT_ERR(EBADF, iopf_s1_map(dev, nested, 0x400000, PAGE, 0x800000, RW));
	ASSERT_ERR(EBADF, iopf_s1_map(-1, nested, 0x400000, PAGE, 0x800000, RW));
	ASSERT_TRUE(iopf_s1_map(fd, parent, 0x400000, PAGE, 0x800000, RW) == -1);
	ASSERT_ERR(EBADF, iopf_dma(fd, -1, 0x400000, PAGE, RW));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}
