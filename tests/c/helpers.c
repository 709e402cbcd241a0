// SPDX-License-Identifier: MIT
/* The setup most cases share, written as a VMM writes it; every step asserts. */
#include "ctest.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

bool t_has(const char *cap)
{
	const char *caps = getenv("IOPF_TEST_CAPS");
	size_t n = strlen(cap);

	for (const char *p = caps; p && *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == n && strncmp(p, cap, n) == 0)
			return true;
		p = end ? end + 1 : p + len;
	}
	return false;
}

void t_need(const char *cap)
{
	if (!t_has(cap))
		SKIP("waits for the daemon's %s (not in this iopfd)", cap);
}

int t_iommufd(void)
{
	int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		ctest_fail(__FILE__, __LINE__, "open /dev/iommu: %s (is $IOPFD_SOCKET set?)",
			   strerror(errno));
	return fd;
}

uint32_t t_ioas(int iommufd)
{
	struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };

	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &cmd));
	ASSERT_NE(cmd.out_ioas_id, 0);
	return cmd.out_ioas_id;
}

int t_dev(unsigned index)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%u", index);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		ctest_fail(__FILE__, __LINE__, "open %s: %s", path, strerror(errno));
	return fd;
}

uint32_t t_bind(int dev, int iommufd)
{
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };

	ASSERT_OK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	ASSERT_NE(bind.out_devid, 0);
	return bind.out_devid;
}

uint32_t t_fault(int iommufd, int *fault_fd)
{
	struct iommu_fault_alloc cmd = { .size = sizeof(cmd) };

	ASSERT_OK(ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &cmd));
	ASSERT_NE(cmd.out_fault_id, 0);
	*fault_fd = (int)cmd.out_fault_fd;
	return cmd.out_fault_id;
}

uint32_t t_hwpt(int iommufd, uint32_t dev_id, uint32_t pt_id, uint32_t flags, uint32_t fault_id)
{
	struct iommu_hwpt_alloc cmd = {
		.size = sizeof(cmd), .flags = flags, .dev_id = dev_id, .pt_id = pt_id,
		.fault_id = fault_id,
	};

	ASSERT_OK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &cmd));
	ASSERT_NE(cmd.out_hwpt_id, 0);
	return cmd.out_hwpt_id;
}

uint32_t t_nested(int iommufd, uint32_t dev_id, uint32_t parent, uint32_t flags,
		  uint32_t fault_id)
{
	struct iommu_hwpt_vtd_s1 s1 = { .addr_width = 48 };
	struct iommu_hwpt_alloc cmd = {
		.size = sizeof(cmd), .flags = flags, .dev_id = dev_id, .pt_id = parent,
		.data_type = IOMMU_HWPT_DATA_VTD_S1, .data_len = sizeof(s1),
		.data_uptr = (uintptr_t)&s1, .fault_id = fault_id,
	};

	ASSERT_OK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &cmd));
	return cmd.out_hwpt_id;
}

int t_attach(int dev, uint32_t pt_id, int pasid)
{
	struct vfio_device_attach_iommufd_pt cmd = {
		.argsz = sizeof(cmd), .pt_id = pt_id,
		.flags = pasid >= 0 ? VFIO_DEVICE_ATTACH_PASID : 0,
		.pasid = pasid >= 0 ? (uint32_t)pasid : 0,
	};

	return ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &cmd);
}

int t_detach(int dev, int pasid)
{
	struct vfio_device_detach_iommufd_pt cmd = {
		.argsz = sizeof(cmd), .flags = pasid >= 0 ? VFIO_DEVICE_DETACH_PASID : 0,
		.pasid = pasid >= 0 ? (uint32_t)pasid : 0,
	};

	return ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &cmd);
}

void t_map(int iommufd, uint32_t ioas, uint64_t iova, uint64_t length)
{
	static char memory[PAGE] __attribute__((aligned(PAGE)));
	struct iommu_ioas_map cmd = {
		.size = sizeof(cmd), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | MAP_RW, .ioas_id = ioas,
		.user_va = (uintptr_t)memory, .length = length, .iova = iova,
	};

	ASSERT_OK(ioctl(iommufd, IOMMU_IOAS_MAP, &cmd));
}

int t_destroy(int iommufd, uint32_t id)
{
	struct iommu_destroy cmd = { .size = sizeof(cmd), .id = id };

	return ioctl(iommufd, IOMMU_DESTROY, &cmd);
}

static void *dma_main(void *arg)
{
	struct t_dma *d = arg;

	errno = 0;
	d->rc = iopf_dma_ex(d->dev, d->pasid, d->iova, d->length, d->perm, &d->result);
	d->err = errno;
	__atomic_store_n(&d->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

void t_dma_start(struct t_dma *d, int dev, int pasid, uint64_t iova, uint64_t length,
		 unsigned perm)
{
	memset(d, 0, sizeof(*d));
	d->dev = dev;
	d->pasid = pasid;
	d->iova = iova;
	d->length = length;
	d->perm = perm;
	ASSERT_OK(pthread_create(&d->thread, NULL, dma_main, d));
}

int t_dma_join(struct t_dma *d)
{
	ASSERT_OK(pthread_join(d->thread, NULL));
	if (d->rc < 0)
		ctest_fail(__FILE__, __LINE__, "iopf_dma: %s", strerror(d->err));
	ASSERT_EQ(d->rc, d->result.status);
	return d->rc;
}

bool t_readable(int fault_fd, int timeout_ms)
{
	struct pollfd p = { .fd = fault_fd, .events = POLLIN };
	int n = poll(&p, 1, timeout_ms);

	ASSERT_TRUE(n >= 0);
	return n == 1 && (p.revents & POLLIN);
}

size_t t_read(int fault_fd, struct iommu_hwpt_pgfault *recs, size_t max, int timeout_ms)
{
	ssize_t n;

	if (!t_readable(fault_fd, timeout_ms))
		return 0;
	n = read(fault_fd, recs, max * sizeof(*recs));
	ASSERT_TRUE(n >= 0);
	ASSERT_EQ(n % sizeof(*recs), 0);
	return (size_t)n / sizeof(*recs);
}

ssize_t t_respond(int fault_fd, uint32_t cookie, uint32_t code)
{
	struct iommu_hwpt_page_response r = { .cookie = cookie, .code = code };

	return write(fault_fd, &r, sizeof(r));
}

void t_env_up(struct t_env *e, unsigned dev_index, uint32_t hwpt_flags)
{
	e->iommufd = t_iommufd();
	e->ioas = t_ioas(e->iommufd);
	e->dev = t_dev(dev_index);
	e->dev_id = t_bind(e->dev, e->iommufd);
	e->fault_id = t_fault(e->iommufd, &e->fault_fd);
	e->hwpt = t_hwpt(e->iommufd, e->dev_id, e->ioas, IOMMU_HWPT_FAULT_ID_VALID | hwpt_flags,
			 e->fault_id);
	ASSERT_OK(t_attach(e->dev, e->hwpt, -1));
}

void t_env_down(struct t_env *e)
{
	ASSERT_OK(t_detach(e->dev, -1));
	ASSERT_OK(t_destroy(e->iommufd, e->hwpt));
	ASSERT_OK(close(e->fault_fd));
	ASSERT_OK(t_destroy(e->iommufd, e->fault_id));
	ASSERT_OK(close(e->dev));
	ASSERT_OK(t_destroy(e->iommufd, e->ioas));
	ASSERT_OK(close(e->iommufd));
}

int t_serve(struct t_env *e, struct t_dma *d, uint32_t code)
{
	struct iommu_hwpt_pgfault recs[64];
	int groups = 0;

	while (!__atomic_load_n(&d->done, __ATOMIC_ACQUIRE)) {
		size_t n = t_read(e->fault_fd, recs, 64, 20);
		for (size_t i = 0; i < n; i++) {
			if (code == IOMMUFD_PAGE_RESP_SUCCESS) {
				struct iommu_ioas_map m = {
					.size = sizeof(m), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | MAP_RW,
					.ioas_id = e->ioas, .user_va = (uintptr_t)recs,
					.length = PAGE, .iova = recs[i].addr & ~(PAGE - 1),
				};
				int rc = ioctl(e->iommufd, IOMMU_IOAS_MAP, &m);
				ASSERT_TRUE(rc == 0 || errno == EEXIST);
			}
			if (recs[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE) {
				ASSERT_EQ(t_respond(e->fault_fd, recs[i].cookie, code), 8);
				groups++;
			}
		}
	}
	return groups;
}
