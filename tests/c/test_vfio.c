// SPDX-License-Identifier: MIT
/* The VFIO device cdev: bind, attach/detach (RID and PASID), GET_INFO, RESET. */
#include "ctest.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

TEST(vfio_nodes_exist_for_each_function_only)
{
	ASSERT_ERR(ENOENT, open("/dev/vfio/devices/vfio8", O_RDWR));
	ASSERT_ERR(ENOENT, open("/dev/vfio/devices/vfio4096", O_RDWR));
	ASSERT_ERR(ENOENT, open("/dev/vfio/devices/vfio01", O_RDWR)); /* not a name devtmpfs uses */
	for (unsigned i = 0; i < DEV_COUNT; i++)
		ASSERT_OK(close(t_dev(i)));
}

TEST(vfio_ioctls_before_bind_are_einval)
{
	int dev = t_dev(DEV_PRI_PASID);
	struct vfio_device_info info = { .argsz = sizeof(info) };
	char buf[8] = { 0 };

	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_GET_INFO, &info));
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_RESET));
	ASSERT_ERR(EINVAL, t_attach(dev, 1, -1));
	ASSERT_ERR(EINVAL, t_detach(dev, -1));
	ASSERT_ERR(EINVAL, ioctl(dev, IOPF_IO(';', 108), buf)); /* even numbers vfio-pci lacks */
	ASSERT_ERR(EINVAL, read(dev, buf, sizeof(buf)));
	ASSERT_ERR(EINVAL, iopf_dma(dev, -1, 0, PAGE, RW));
	ASSERT_OK(close(dev));
}

TEST(vfio_bind_rules)
{
	int fd = t_iommufd(), dev = t_dev(DEV_PRI_PASID), pf = t_dev(DEV_PF_WITH_VFS);
	int null = open("/dev/null", O_RDWR), closed = open("/dev/null", O_RDWR);
	uint8_t uuid[16] = { 1 };
	struct vfio_device_bind_iommufd good = { .argsz = sizeof(good), .iommufd = fd };
	struct vfio_device_bind_iommufd c;
	struct {
		struct vfio_device_bind_iommufd b;
		uint64_t tail;
	} big = { good, 1 };

	close(closed);
	c = good, c.argsz = 12;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	big.b.argsz = sizeof(big);
	ASSERT_ERR(E2BIG, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &big));
	c = good, c.flags = 2;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	c = good, c.iommufd = -1;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	c = good, c.iommufd = null; /* a file, but not an iommufd */
	ASSERT_ERR(EBADFD, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	c = good, c.iommufd = closed;
	ASSERT_ERR(EBADF, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	c = good, c.iommufd = dev;
	ASSERT_ERR(EBADFD, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	/* a VF token where no PF/VF relationship asks for one */
	c = good, c.flags = VFIO_DEVICE_BIND_FLAG_TOKEN, c.token_uuid_ptr = (uintptr_t)uuid;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	c = good;
	ASSERT_OK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c));
	ASSERT_NE(c.out_devid, 0);
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &c)); /* bound already */
	/* argsz ends before token_uuid_ptr: it reads as 0, and the token copy faults */
	c = good, c.argsz = 16, c.flags = VFIO_DEVICE_BIND_FLAG_TOKEN, c.token_uuid_ptr = (uintptr_t)uuid;
	ASSERT_ERR(EFAULT, ioctl(pf, VFIO_DEVICE_BIND_IOMMUFD, &c));
	c = good, c.flags = VFIO_DEVICE_BIND_FLAG_TOKEN, c.token_uuid_ptr = (uintptr_t)uuid;
	ASSERT_OK(ioctl(pf, VFIO_DEVICE_BIND_IOMMUFD, &c));
	ASSERT_OK(close(pf));
	pf = t_dev(DEV_PF_WITH_VFS);
	c = good, c.argsz = 16;
	ASSERT_OK(ioctl(pf, VFIO_DEVICE_BIND_IOMMUFD, &c));
	ASSERT_OK(close(null));
	ASSERT_OK(close(pf));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(vfio_one_bind_per_function)
{
	int fd = t_iommufd(), first = t_dev(DEV_PRI_PASID), second = t_dev(DEV_PRI_PASID);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = fd };

	t_bind(first, fd);
	ASSERT_ERR(EINVAL, ioctl(second, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	ASSERT_OK(close(first)); /* closing the cdev unbinds */
	ASSERT_OK(ioctl(second, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	ASSERT_OK(close(second));
	ASSERT_OK(close(fd));
}

TEST(vfio_get_info_describes_a_vfio_pci_function)
{
	int fd = t_iommufd(), dev = t_dev(DEV_VF);
	struct vfio_device_info info;

	t_bind(dev, fd);
	memset(&info, 0xaa, sizeof(info));
	info.argsz = sizeof(info);
	ASSERT_OK(ioctl(dev, VFIO_DEVICE_GET_INFO, &info));
	ASSERT_EQ(info.argsz, sizeof(info));
	ASSERT_EQ(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
	ASSERT_EQ(info.num_regions, VFIO_PCI_NUM_REGIONS);
	ASSERT_EQ(info.num_irqs, VFIO_PCI_NUM_IRQS);
	ASSERT_EQ(info.cap_offset, 0);
	/* the struct before cap_offset: only what argsz names is written */
	memset(&info, 0xaa, sizeof(info));
	info.argsz = 16;
	ASSERT_OK(ioctl(dev, VFIO_DEVICE_GET_INFO, &info));
	ASSERT_EQ(info.num_irqs, VFIO_PCI_NUM_IRQS);
	ASSERT_EQ(info.cap_offset, 0xaaaaaaaa);
	info.argsz = 12;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_GET_INFO, &info));
	ASSERT_ERR(EFAULT, ioctl(dev, VFIO_DEVICE_GET_INFO, NULL));
	/* vfio_pci_core_ioctl() knows no other number */
	ASSERT_ERR(ENOTTY, ioctl(dev, IOPF_IO(';', 108), &info)); /* GET_REGION_INFO */
	ASSERT_ERR(ENOTTY, ioctl(dev, IOMMU_IOAS_ALLOC, &info));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(vfio_attach_rid_and_pasid_rules)
{
	int fd = t_iommufd(), ffd;
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID), nopri = t_dev(DEV_NO_PRI), vf = t_dev(DEV_VF);
	uint32_t dev_id = t_bind(dev, fd), nopri_id = t_bind(nopri, fd), vf_id = t_bind(vf, fd);
	uint32_t fault = t_fault(fd, &ffd);
	uint32_t plain = t_hwpt(fd, dev_id, ioas, 0, 0);
	uint32_t pasid_ok = t_hwpt(fd, dev_id, ioas, IOMMU_HWPT_ALLOC_PASID, 0);
	uint32_t faulting = t_hwpt(fd, dev_id, ioas,
				   IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID, fault);
	struct vfio_device_attach_iommufd_pt a = { .argsz = sizeof(a), .pt_id = pasid_ok };

	ASSERT_OK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a));
	ASSERT_EQ(a.pt_id, pasid_ok); /* a HWPT comes back as itself */
	ASSERT_OK(t_attach(dev, faulting, -1)); /* attached already: a replace */
	ASSERT_OK(t_attach(dev, faulting, 7));
	ASSERT_OK(t_attach(dev, pasid_ok, 7)); /* replace at the PASID */
	/* PASID compatibility (iommufd_hwpt_pasid_compat): a HWPT without the flag */
	ASSERT_ERR(EINVAL, t_attach(dev, plain, 8));
	ASSERT_ERR(ENOENT, t_attach(dev, 0xfffff, -1));
	a = (struct vfio_device_attach_iommufd_pt){ .argsz = 8, .pt_id = faulting };
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a));
	a = (struct vfio_device_attach_iommufd_pt){ .argsz = sizeof(a), .flags = 2, .pt_id = faulting };
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a));
	a = (struct vfio_device_attach_iommufd_pt){ .argsz = 12, .flags = VFIO_DEVICE_ATTACH_PASID,
						    .pt_id = faulting, .pasid = 9 };
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a));
	/* the argsz beyond the struct is not looked at (no E2BIG in VFIO) */
	struct {
		struct vfio_device_attach_iommufd_pt a;
		uint32_t tail;
	} big = { { .argsz = sizeof(big), .pt_id = faulting }, 0xffffffff };
	ASSERT_OK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &big));
	/* a fault-capable HWPT needs PRI (VT-d: ENODEV), and a VF may not share it */
	uint32_t nopri_faulting = t_hwpt(fd, nopri_id, ioas, IOMMU_HWPT_FAULT_ID_VALID, fault);
	ASSERT_ERR(ENODEV, t_attach(nopri, nopri_faulting, -1));
	uint32_t vf_faulting = t_hwpt(fd, vf_id, ioas, IOMMU_HWPT_FAULT_ID_VALID, fault);
	ASSERT_ERR(EINVAL, t_attach(vf, vf_faulting, -1));
	ASSERT_OK(t_attach(vf, t_hwpt(fd, vf_id, ioas, 0, 0), -1));
	ASSERT_OK(close(ffd));
	ASSERT_OK(close(vf));
	ASSERT_OK(close(nopri));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(vfio_attach_of_an_ioas_reports_the_automatic_domain)
{
	t_need("auto_domain");
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	struct vfio_device_attach_iommufd_pt a = { .argsz = sizeof(a), .pt_id = ioas };

	t_bind(dev, fd);
	ASSERT_OK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a));
	ASSERT_NE(a.pt_id, ioas);
	ASSERT_ERR(EBUSY, t_destroy(fd, a.pt_id)); /* attached */
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(vfio_detach_rules)
{
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, fd);
	uint32_t hwpt = t_hwpt(fd, dev_id, ioas, IOMMU_HWPT_ALLOC_PASID, 0);
	struct vfio_device_detach_iommufd_pt d = { .argsz = sizeof(d) };

	ASSERT_OK(t_detach(dev, -1)); /* nothing attached: vfio says nothing */
	ASSERT_OK(t_detach(dev, 3));
	ASSERT_OK(t_attach(dev, hwpt, -1));
	ASSERT_OK(t_attach(dev, hwpt, 3));
	ASSERT_ERR(EBUSY, t_destroy(fd, hwpt));
	d.argsz = 4;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d));
	d.argsz = sizeof(d), d.flags = 2;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d));
	d.argsz = 8, d.flags = VFIO_DEVICE_DETACH_PASID, d.pasid = 3;
	ASSERT_ERR(EINVAL, ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d));
	ASSERT_OK(t_detach(dev, 3));
	ASSERT_OK(t_detach(dev, -1));
	ASSERT_OK(t_destroy(fd, hwpt));
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(vfio_close_detaches_and_unbinds)
{
	int fd = t_iommufd();
	uint32_t ioas = t_ioas(fd);
	int dev = t_dev(DEV_PRI_PASID);
	uint32_t dev_id = t_bind(dev, fd);
	uint32_t hwpt = t_hwpt(fd, dev_id, ioas, IOMMU_HWPT_ALLOC_PASID, 0);

	ASSERT_OK(t_attach(dev, hwpt, -1));
	ASSERT_OK(t_attach(dev, hwpt, 2));
	ASSERT_OK(close(dev));
	ASSERT_OK(t_destroy(fd, hwpt)); /* no longer attached anywhere */
	dev = t_dev(DEV_PRI_PASID);
	ASSERT_NE(t_bind(dev, fd), dev_id); /* a new device object */
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(vfio_reset_leaves_the_fault_queue_alone)
{
	struct t_env e;
	struct iommu_hwpt_pgfault rec[8];
	struct t_dma d;

	t_env_up(&e, DEV_PRI_PASID, 0);
	t_dma_start(&d, e.dev, -1, 0x300000, PAGE, IOPF_PERM_READ);
	ASSERT_EQ(t_read(e.fault_fd, rec, 8, 5000), 1);
	/* FLR: the transfer's requests are gone from the function, not from the queue */
	ASSERT_OK(ioctl(e.dev, VFIO_DEVICE_RESET));
	t_map(e.iommufd, e.ioas, 0x300000, PAGE);
	ASSERT_EQ(t_respond(e.fault_fd, rec[0].cookie, IOMMUFD_PAGE_RESP_SUCCESS), 8); /* answerable */
	/* the transfer the FLR cut ends as the function decides; what matters: */
	t_dma_join(&d);
	/* and the function, PRI restored, works on */
	ASSERT_EQ(iopf_dma(e.dev, -1, 0x300000, PAGE, IOPF_PERM_READ), IOPF_DMA_OK);
	t_env_down(&e);
}
