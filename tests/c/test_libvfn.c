// SPDX-License-Identifier: MIT
/*
 * A driver written the way libvfn is (src/iommu/context.c, src/pci/util.c,
 * src/iommu/iommufd.c): the same calls in the same order, with the same structures,
 * run against the preload. The parts that need a daemon op iopfd does not have yet
 * skip, naming it; with such a daemon the ioctl is ENOTTY, as on a kernel without it.
 */
#include "ctest.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* src/iommu/context.c: __iommufd_is_available() */
static bool iommufd_is_available(void)
{
	struct stat sb;

	if (stat("/dev/vfio/devices", &sb) || !S_ISDIR(sb.st_mode))
		return false;
	if (stat("/dev/iommu", &sb))
		return false;
	return true;
}

/* src/pci/util.c: pci_get_device_vfio_id() */
static char *pci_get_device_vfio_id(const char *bdf)
{
	char *path = NULL, *vfio_id = NULL;
	struct dirent *dentry;
	DIR *dp;

	if (asprintf(&path, "/sys/bus/pci/devices/%s/vfio-dev", bdf) < 0)
		return NULL;
	dp = opendir(path);
	free(path);
	if (!dp)
		return NULL;
	do {
		errno = 0;
		dentry = readdir(dp);
		if (!dentry) {
			if (!errno)
				errno = EINVAL;
			goto out;
		}
		if (strncmp("vfio", dentry->d_name, 4) == 0)
			break;
	} while (dentry != NULL);
	vfio_id = strdup(dentry->d_name);
out:
	ASSERT_OK(closedir(dp));
	return vfio_id;
}

/* src/iommu/iommufd.c: the device's cdev, opened by its sysfs name. */
static int open_cdev(const char *bdf)
{
	char *vfio_id = pci_get_device_vfio_id(bdf), *path = NULL;
	int devfd;

	if (!vfio_id)
		ctest_fail(__FILE__, __LINE__, "no vfio id for %s: %s", bdf, strerror(errno));
	ASSERT_TRUE(asprintf(&path, "/dev/vfio/devices/%s", vfio_id) > 0);
	devfd = open(path, O_RDWR);
	if (devfd < 0)
		ctest_fail(__FILE__, __LINE__, "open %s: %s", path, strerror(errno));
	free(path);
	free(vfio_id);
	return devfd;
}

/* iommu_ioas_update_iova_ranges(): ask with no room, size the array from EMSGSIZE. */
static struct iommu_iova_range *update_iova_ranges(int iommufd, uint32_t ioas_id, uint32_t *n,
						   uint64_t *alignment)
{
	struct iommu_ioas_iova_ranges iova_ranges = {
		.size = sizeof(iova_ranges), .ioas_id = ioas_id, .num_iovas = 0,
	};
	struct iommu_iova_range *ranges = NULL;

	if (ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &iova_ranges)) {
		ASSERT_EQ(errno, EMSGSIZE);
		ranges = calloc(iova_ranges.num_iovas, sizeof(*ranges));
		ASSERT_TRUE(ranges != NULL);
		iova_ranges.allowed_iovas = (uintptr_t)ranges;
		ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &iova_ranges));
	}
	*n = iova_ranges.num_iovas;
	*alignment = iova_ranges.out_iova_alignment;
	return ranges;
}

static const char *const bdf = "0000:3a:00.0"; /* vfio0: PRI, ATS, PASID */

TEST(libvfn_finds_iommufd_and_each_function_by_its_sysfs_name)
{
	static const char *const bdfs[DEV_COUNT] = {
		"0000:3a:00.0", "0000:3b:00.0", "0000:3b:00.1", "0000:3b:00.2",
		"0000:3c:00.0", "0000:5a:00.0", "0000:5b:00.0", "0000:5c:00.0",
	};

	ASSERT_TRUE(iommufd_is_available());
	for (unsigned i = 0; i < DEV_COUNT; i++) {
		char *id = pci_get_device_vfio_id(bdfs[i]), want[16];
		snprintf(want, sizeof(want), "vfio%u", i);
		ASSERT_TRUE(id && strcmp(id, want) == 0);
		free(id);
	}
	ASSERT_TRUE(pci_get_device_vfio_id("0000:99:00.0") == NULL);
}

/* iommufd_get_device_fd() and iommu_ioas_do_dma_map()/_unmap(), then the fault queue:
 * the whole path of a libvfn driver that takes page faults. */
TEST(libvfn_get_device_fd_map_and_fault_loop)
{
	ASSERT_TRUE(iommufd_is_available());
	int iommufd = open("/dev/iommu", O_RDWR);
	ASSERT_TRUE(iommufd >= 0);
	struct iommu_ioas_alloc alloc_data = { .size = sizeof(alloc_data), .flags = 0 };
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc_data));
	uint32_t ioas_id = alloc_data.out_ioas_id;

	struct vfio_device_bind_iommufd bind = {
		.argsz = sizeof(bind), .flags = 0, .iommufd = iommufd,
	};
	struct vfio_device_attach_iommufd_pt attach_data = {
		.argsz = sizeof(attach_data), .flags = 0, .pt_id = ioas_id,
	};
	int devfd = open_cdev(bdf);
	ASSERT_OK(ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	if (ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach_data))
		SKIP("waits for the daemon's attach of an IOAS (auto_domain): %s", strerror(errno));
	ASSERT_NE(attach_data.pt_id, ioas_id); /* the automatic domain */

	uint32_t nranges = 0;
	uint64_t alignment = 0;
	if (!t_has("ioas_iova_ranges")) {
		struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = ioas_id };
		ASSERT_ERR(ENOTTY, ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &r));
		SKIP("waits for the daemon's ioas_iova_ranges");
	}
	struct iommu_iova_range *ranges = update_iova_ranges(iommufd, ioas_id, &nranges, &alignment);
	ASSERT_TRUE(nranges >= 1 && ranges);
	ASSERT_EQ(alignment, PAGE);

	/* iommu_ioas_do_dma_map(): real memory, with and without a fixed IOVA */
	size_t len = 4 * PAGE;
	void *vaddr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(vaddr != MAP_FAILED);
	uint64_t fixed = (ranges[0].start + 0x100000) & ~(PAGE - 1);
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
		.ioas_id = ioas_id, .user_va = (uintptr_t)vaddr, .iova = fixed, .length = len,
	};
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_MAP, &map));
	struct iommu_ioas_map automap = {
		.size = sizeof(automap),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas_id, .user_va = (uintptr_t)vaddr, .length = len,
	};
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_MAP, &automap));
	ASSERT_NE(automap.iova, fixed);
	ASSERT_EQ(iopf_dma(devfd, -1, fixed, len, RW), IOPF_DMA_OK);
	struct iommu_ioas_unmap unmap = {
		.size = sizeof(unmap), .ioas_id = ioas_id, .iova = automap.iova, .length = len,
	};
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap));

	/* the fault queue, a fault-capable HWPT on the IOAS, and a replace */
	struct iommu_fault_alloc fault = { .size = sizeof(fault) };
	ASSERT_OK(ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fault));
	struct iommu_hwpt_alloc hwpt = {
		.size = sizeof(hwpt), .flags = IOMMU_HWPT_FAULT_ID_VALID, .dev_id = bind.out_devid,
		.pt_id = ioas_id, .fault_id = fault.out_fault_id,
	};
	ASSERT_OK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &hwpt));
	attach_data.pt_id = hwpt.out_hwpt_id;
	ASSERT_OK(ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach_data));
	ASSERT_EQ(attach_data.pt_id, hwpt.out_hwpt_id);

	struct t_env e = {
		.iommufd = iommufd, .ioas = ioas_id, .dev = devfd, .dev_id = bind.out_devid,
		.fault_id = fault.out_fault_id, .fault_fd = (int)fault.out_fault_fd,
		.hwpt = hwpt.out_hwpt_id,
	};
	struct t_dma d;
	uint64_t where = (fixed + 0x1000000) & ~(PAGE - 1);
	t_dma_start(&d, devfd, -1, where, 2 * PAGE, RW);
	ASSERT_TRUE(t_serve(&e, &d, IOMMUFD_PAGE_RESP_SUCCESS) >= 1);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);

	ASSERT_OK(close(devfd)); /* closing the cdev unbinds */
	ASSERT_OK(close((int)fault.out_fault_fd));
	ASSERT_OK(munmap(vaddr, len));
	free(ranges);
	ASSERT_OK(close(iommufd));
}

/* What works without the automatic domain: the same lookup, bind and maps, a
 * fault-capable HWPT on the IOAS attached directly, and the fault loop. */
TEST(libvfn_map_real_memory_and_fault_loop_without_an_automatic_domain)
{
	ASSERT_TRUE(iommufd_is_available());
	int iommufd = open("/dev/iommu", O_RDWR);
	ASSERT_TRUE(iommufd >= 0);
	struct iommu_ioas_alloc alloc_data = { .size = sizeof(alloc_data) };
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc_data));
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	int devfd = open_cdev(bdf);
	ASSERT_OK(ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &bind));

	size_t len = 2 * PAGE;
	void *vaddr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(vaddr != MAP_FAILED);
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
		.ioas_id = alloc_data.out_ioas_id, .user_va = (uintptr_t)vaddr, .iova = 0x100000,
		.length = len,
	};
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_MAP, &map));
	if (t_has("auto_iova")) {
		struct iommu_ioas_map automap = map;
		automap.flags &= ~IOMMU_IOAS_MAP_FIXED_IOVA;
		automap.iova = 0;
		ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_MAP, &automap));
		struct iommu_ioas_unmap unmap = {
			.size = sizeof(unmap), .ioas_id = alloc_data.out_ioas_id,
			.iova = automap.iova, .length = len,
		};
		ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap));
	}

	struct iommu_fault_alloc fault = { .size = sizeof(fault) };
	ASSERT_OK(ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fault));
	struct iommu_hwpt_alloc hwpt = {
		.size = sizeof(hwpt), .flags = IOMMU_HWPT_FAULT_ID_VALID, .dev_id = bind.out_devid,
		.pt_id = alloc_data.out_ioas_id, .fault_id = fault.out_fault_id,
	};
	ASSERT_OK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &hwpt));
	struct vfio_device_attach_iommufd_pt attach_data = {
		.argsz = sizeof(attach_data), .pt_id = hwpt.out_hwpt_id,
	};
	ASSERT_OK(ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach_data));
	ASSERT_EQ(iopf_dma(devfd, -1, 0x100000, len, RW), IOPF_DMA_OK);

	struct t_env e = {
		.iommufd = iommufd, .ioas = alloc_data.out_ioas_id, .dev = devfd,
		.dev_id = bind.out_devid, .fault_id = fault.out_fault_id,
		.fault_fd = (int)fault.out_fault_fd, .hwpt = hwpt.out_hwpt_id,
	};
	struct t_dma d;
	t_dma_start(&d, devfd, -1, 0x400000, 2 * PAGE, RW);
	ASSERT_TRUE(t_serve(&e, &d, IOMMUFD_PAGE_RESP_SUCCESS) >= 1);
	ASSERT_EQ(t_dma_join(&d), IOPF_DMA_OK);
	ASSERT_OK(close(devfd));
	ASSERT_OK(close((int)fault.out_fault_fd));
	ASSERT_OK(munmap(vaddr, len));
	ASSERT_OK(close(iommufd));
}

/* QEMU's iommufd backend: guest RAM is a memfd, mapped with IOMMU_IOAS_MAP_FILE. */
static void memfd_guest_ram(bool need_cap)
{
	size_t ram = 16 * PAGE;
	int iommufd = t_iommufd();
	uint32_t ioas = t_ioas(iommufd);
	int memfd = memfd_create("guest-ram", MFD_CLOEXEC);
	ASSERT_TRUE(memfd >= 0);
	ASSERT_OK(ftruncate(memfd, (off_t)ram));
	void *host = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	ASSERT_TRUE(host != MAP_FAILED);
	struct iommu_ioas_map_file map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas, .fd = memfd, .start = 0, .length = ram / 2, .iova = 0,
	};
	if (need_cap && !t_has("ioas_map_file")) {
		ASSERT_ERR(ENOTTY, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &map));
		SKIP("waits for the daemon's ioas_map_file");
	}
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &map));
	ASSERT_EQ(map.iova, 0);
	ASSERT_ERR(EEXIST, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &map));
	struct iommu_ioas_map_file bad = map;
	bad.start = 100;
	bad.iova = ram;
	ASSERT_ERR(EINVAL, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &bad));
	bad = map, bad.fd = -1;
	ASSERT_ERR(EBADF, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &bad));
	int null = open("/dev/null", O_RDWR);
	bad = map, bad.fd = null, bad.iova = ram;
	ASSERT_ERR(EINVAL, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &bad)); /* not shmem */
	bad = map, bad.flags = IOMMU_IOAS_MAP_FIXED_IOVA;
	ASSERT_ERR(EINVAL, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &bad));
	bad = map, bad.flags |= 1u << 5;
	ASSERT_ERR(EOPNOTSUPP, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &bad));
	bad = map, bad.ioas_id = 0xfffff;
	ASSERT_ERR(ENOENT, ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &bad));
	/* the second half, where the kernel chooses */
	struct iommu_ioas_map_file high = map;
	high.flags &= ~IOMMU_IOAS_MAP_FIXED_IOVA;
	high.start = ram / 2;
	high.iova = 0;
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &high));
	ASSERT_EQ(high.iova % PAGE, 0);
	struct iommu_ioas_unmap all = { .size = sizeof(all), .ioas_id = ioas, .length = UINT64_MAX };
	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &all));
	ASSERT_EQ(all.length, ram);
	ASSERT_OK(close(null));
	ASSERT_OK(munmap(host, ram));
	ASSERT_OK(close(memfd));
	ASSERT_OK(close(iommufd));
}

TEST(qemu_memfd_guest_ram_mapped_with_map_file)
{
	memfd_guest_ram(true);
}

TEST(standin_qemu_memfd_guest_ram_mapped_with_map_file)
{
	memfd_guest_ram(false);
}
