// SPDX-License-Identifier: MIT
/*
 * IOMMU_IOAS_IOVA_RANGES, _ALLOW_IOVAS, _COPY and IOMMU_OPTION. Against a daemon without
 * the op each is ENOTTY and the case skips, naming the op; the standin_ cases run the
 * same checks against tests/c/test_c_uapi.py's stand-in, which has the ops' wire shapes.
 */
#include "ctest.h"

#include <sys/ioctl.h>
#include <unistd.h>

static bool need(const char *op, int fd, unsigned long cmd, void *arg, bool standin)
{
	if (standin || t_has(op))
		return true;
	ASSERT_ERR(ENOTTY, ioctl(fd, cmd, arg));
	SKIP("waits for the daemon's %s", op);
}

static void iova_ranges(bool standin)
{
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	struct iommu_iova_range ranges[4];
	struct iommu_ioas_iova_ranges cmd = { .size = sizeof(cmd), .ioas_id = ioas };

	need("ioas_iova_ranges", fd, IOMMU_IOAS_IOVA_RANGES, &cmd, standin);
	/* no room: EMSGSIZE, with num_iovas and the alignment copied back */
	ASSERT_ERR(EMSGSIZE, ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
	ASSERT_TRUE(cmd.num_iovas >= 1 && cmd.num_iovas <= 4);
	ASSERT_NE(cmd.out_iova_alignment, 0);
	uint32_t n = cmd.num_iovas;
	memset(ranges, 0xaa, sizeof(ranges));
	cmd.allowed_iovas = (uintptr_t)ranges;
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
	ASSERT_EQ(cmd.num_iovas, n);
	for (uint32_t i = 0; i < n; i++)
		ASSERT_TRUE(ranges[i].start < ranges[i].last);
	/* one slot for more ranges: the first is written, the rest counted */
	if (n > 1) {
		memset(ranges, 0, sizeof(ranges));
		cmd.num_iovas = 1;
		ASSERT_ERR(EMSGSIZE, ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
		ASSERT_EQ(cmd.num_iovas, n);
		ASSERT_NE(ranges[0].last, 0);
		ASSERT_EQ(ranges[1].last, 0);
	}
	cmd.num_iovas = 4;
	cmd.__reserved = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
	cmd.__reserved = 0;
	cmd.ioas_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
	cmd.ioas_id = ioas;
	cmd.allowed_iovas = 8;
	ASSERT_ERR(EFAULT, ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
	cmd.size = 24;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
	ASSERT_OK(close(fd));
}

TEST(ioas_iova_ranges_emsgsize_rule)
{
	iova_ranges(false);
}

TEST(standin_ioas_iova_ranges_emsgsize_rule)
{
	iova_ranges(true);
}

static void allow_and_copy(bool standin)
{
	int fd = t_iommufd();
	uint32_t src = t_ioas(fd), dst = t_ioas(fd);
	struct iommu_iova_range allowed[2] = {
		{ .start = 0x100000, .last = 0x1ffffff }, { .start = 0x40000000, .last = 0x4fffffff },
	};
	struct iommu_ioas_allow_iovas allow = {
		.size = sizeof(allow), .ioas_id = dst, .num_iovas = 2,
		.allowed_iovas = (uintptr_t)allowed,
	};

	need("ioas_allow_iovas", fd, IOMMU_IOAS_ALLOW_IOVAS, &allow, standin);
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &allow));
	allowed[1].start = allowed[1].last;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &allow)); /* start >= last */
	allow.allowed_iovas = 16;
	ASSERT_ERR(EFAULT, ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &allow));
	allow.__reserved = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &allow));
	allow.__reserved = 0, allow.ioas_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &allow));

	t_map(fd, src, 0x200000, 2 * PAGE);
	struct iommu_ioas_copy copy = {
		.size = sizeof(copy),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | MAP_RW,
		.dst_ioas_id = dst, .src_ioas_id = src, .length = PAGE,
		.dst_iova = 0x300000, .src_iova = 0x201000,
	};
	if (!standin && !t_has("ioas_copy")) {
		ASSERT_ERR(ENOTTY, ioctl(fd, IOMMU_IOAS_COPY, &copy));
		SKIP("waits for the daemon's ioas_copy");
	}
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_COPY, &copy));
	ASSERT_EQ(copy.dst_iova, 0x300000);
	ASSERT_ERR(EEXIST, ioctl(fd, IOMMU_IOAS_COPY, &copy));
	struct iommu_ioas_copy bad = copy;
	bad.src_iova = 0x202000; /* past the area */
	bad.dst_iova = 0x400000;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_COPY, &bad));
	bad = copy, bad.flags |= 1u << 4;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_IOAS_COPY, &bad));
	bad = copy, bad.length = UINT64_MAX;
	ASSERT_ERR(EOVERFLOW, ioctl(fd, IOMMU_IOAS_COPY, &bad));
	bad = copy, bad.src_ioas_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_IOAS_COPY, &bad));
	bad = copy, bad.length = 0;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_IOAS_COPY, &bad));
	bad = copy, bad.flags = MAP_RW, bad.dst_iova = 0; /* the kernel chooses */
	ASSERT_OK(ioctl(fd, IOMMU_IOAS_COPY, &bad));
	ASSERT_NE(bad.dst_iova, 0x300000);
	ASSERT_OK(close(fd));
}

TEST(ioas_allow_iovas_and_copy_rules)
{
	allow_and_copy(false);
}

TEST(standin_ioas_allow_iovas_and_copy_rules)
{
	allow_and_copy(true);
}

static void options(bool standin)
{
	int fd = t_iommufd();
	struct iommu_option opt = {
		.size = sizeof(opt), .option_id = IOMMU_OPTION_RLIMIT_MODE, .op = IOMMU_OPTION_OP_GET,
	};

	need("option", fd, IOMMU_OPTION, &opt, standin);
	opt.val64 = 7;
	ASSERT_OK(ioctl(fd, IOMMU_OPTION, &opt));
	ASSERT_TRUE(opt.val64 <= 1);
	opt.op = IOMMU_OPTION_OP_SET, opt.val64 = 2;
	errno = 0;
	bool capable = !(ioctl(fd, IOMMU_OPTION, &opt) == -1 && errno == EPERM);
	if (capable) { /* CAP_SYS_RESOURCE, and no object yet */
		ASSERT_EQ(errno, EINVAL);
		opt.val64 = 1;
		ASSERT_OK(ioctl(fd, IOMMU_OPTION, &opt));
	}
	uint32_t ioas = t_ioas(fd);
	if (capable)
		ASSERT_ERR(EBUSY, ioctl(fd, IOMMU_OPTION, &opt)); /* the context has objects */
	opt.object_id = ioas;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_OPTION, &opt));
	opt = (struct iommu_option){ .size = sizeof(opt), .option_id = IOMMU_OPTION_HUGE_PAGES,
				     .op = IOMMU_OPTION_OP_GET, .object_id = ioas };
	ASSERT_OK(ioctl(fd, IOMMU_OPTION, &opt));
	ASSERT_EQ(opt.val64, 1);
	opt.op = IOMMU_OPTION_OP_SET, opt.val64 = 0;
	ASSERT_OK(ioctl(fd, IOMMU_OPTION, &opt));
	opt.val64 = 3;
	ASSERT_ERR(EINVAL, ioctl(fd, IOMMU_OPTION, &opt));
	opt.op = 2;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_OPTION, &opt));
	opt.op = IOMMU_OPTION_OP_GET, opt.object_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(fd, IOMMU_OPTION, &opt));
	opt.option_id = 9;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_OPTION, &opt));
	opt.option_id = IOMMU_OPTION_HUGE_PAGES, opt.__reserved = 1;
	ASSERT_ERR(EOPNOTSUPP, ioctl(fd, IOMMU_OPTION, &opt));
	ASSERT_OK(close(fd));
}

TEST(iommu_option_rlimit_mode_and_huge_pages)
{
	options(false);
}

TEST(standin_iommu_option_rlimit_mode_and_huge_pages)
{
	options(true);
}
