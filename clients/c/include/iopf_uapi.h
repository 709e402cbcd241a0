/* SPDX-License-Identifier: MIT */
/*
 * The kernel uAPI that iopfd serves, written as facts: the structures, flags and
 * ioctl numbers of include/uapi/linux/iommufd.h and include/uapi/linux/vfio.h
 * (Linux 6.18) under their uAPI names, each size, offset and number pinned with
 * _Static_assert, so that a program written against the kernel headers compiles
 * unchanged against this one.
 *
 * Only what iopfd serves is here. A program that needs more of VFIO (regions,
 * IRQs) includes <linux/iommufd.h> and <linux/vfio.h> *before* this header: the
 * definitions below then step aside, the pieces an older <linux/vfio.h> lacks (the
 * cdev ioctls of 6.6+) are added, and the asserts check the system's headers (a
 * <linux/iommufd.h> older than 6.15, or a <linux/vfio.h> whose attach struct has no
 * `pasid`, fails them: that header is too old for what iopfd serves).
 */
#ifndef IOPF_UAPI_H
#define IOPF_UAPI_H

#include <stddef.h>
#include <stdint.h>

/* _IO(type, nr) of <asm-generic/ioctl.h>: direction and size bits are 0. */
#define IOPF_IO(type, nr) ((((unsigned long)(type)) << 8) | (unsigned long)(nr))

typedef uint64_t iopf_aligned_u64 __attribute__((aligned(8)));

/* The kernel tree's guard, and the one headers_install turns it into. */
#if defined(_UAPI_IOMMUFD_H) || defined(_IOMMUFD_H)
#define IOPF_SYSTEM_IOMMUFD_H 1
#endif
#if defined(_UAPIVFIO_H) || defined(VFIO_H)
#define IOPF_SYSTEM_VFIO_H 1
#endif

#ifndef IOPF_SYSTEM_IOMMUFD_H

#define IOMMUFD_TYPE (';')

enum {
	IOMMUFD_CMD_BASE = 0x80,
	IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE,
	IOMMUFD_CMD_IOAS_ALLOC = 0x81,
	IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82,
	IOMMUFD_CMD_IOAS_COPY = 0x83,
	IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84,
	IOMMUFD_CMD_IOAS_MAP = 0x85,
	IOMMUFD_CMD_IOAS_UNMAP = 0x86,
	IOMMUFD_CMD_OPTION = 0x87,
	IOMMUFD_CMD_VFIO_IOAS = 0x88,
	IOMMUFD_CMD_HWPT_ALLOC = 0x89,
	IOMMUFD_CMD_GET_HW_INFO = 0x8a,
	IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8b,
	IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8c,
	IOMMUFD_CMD_HWPT_INVALIDATE = 0x8d,
	IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8e,
	IOMMUFD_CMD_IOAS_MAP_FILE = 0x8f,
	IOMMUFD_CMD_VIOMMU_ALLOC = 0x90,
	IOMMUFD_CMD_VDEVICE_ALLOC = 0x91,
	IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92,
	IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93,
	IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94,
};

struct iommu_destroy {
	uint32_t size;
	uint32_t id;
};
#define IOMMU_DESTROY IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)

struct iommu_ioas_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_ioas_id;
};
#define IOMMU_IOAS_ALLOC IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)

enum iommufd_ioas_map_flags {
	IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0,
	IOMMU_IOAS_MAP_WRITEABLE = 1 << 1,
	IOMMU_IOAS_MAP_READABLE = 1 << 2,
};

struct iommu_ioas_map {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	uint32_t __reserved;
	iopf_aligned_u64 user_va;
	iopf_aligned_u64 length;
	iopf_aligned_u64 iova;
};
#define IOMMU_IOAS_MAP IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)

struct iommu_ioas_unmap {
	uint32_t size;
	uint32_t ioas_id;
	iopf_aligned_u64 iova;
	iopf_aligned_u64 length;
};
#define IOMMU_IOAS_UNMAP IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)

struct iommu_iova_range {
	iopf_aligned_u64 start;
	iopf_aligned_u64 last;
};

struct iommu_ioas_iova_ranges {
	uint32_t size;
	uint32_t ioas_id;
	uint32_t num_iovas;
	uint32_t __reserved;
	iopf_aligned_u64 allowed_iovas;
	iopf_aligned_u64 out_iova_alignment;
};
#define IOMMU_IOAS_IOVA_RANGES IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)

struct iommu_ioas_allow_iovas {
	uint32_t size;
	uint32_t ioas_id;
	uint32_t num_iovas;
	uint32_t __reserved;
	iopf_aligned_u64 allowed_iovas;
};
#define IOMMU_IOAS_ALLOW_IOVAS IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)

struct iommu_ioas_copy {
	uint32_t size;
	uint32_t flags;
	uint32_t dst_ioas_id;
	uint32_t src_ioas_id;
	iopf_aligned_u64 length;
	iopf_aligned_u64 dst_iova;
	iopf_aligned_u64 src_iova;
};
#define IOMMU_IOAS_COPY IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)

struct iommu_ioas_map_file {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	int32_t fd;
	iopf_aligned_u64 start;
	iopf_aligned_u64 length;
	iopf_aligned_u64 iova;
};
#define IOMMU_IOAS_MAP_FILE IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)

enum iommufd_option {
	IOMMU_OPTION_RLIMIT_MODE = 0,
	IOMMU_OPTION_HUGE_PAGES = 1,
};

enum iommufd_option_ops {
	IOMMU_OPTION_OP_SET = 0,
	IOMMU_OPTION_OP_GET = 1,
};

struct iommu_option {
	uint32_t size;
	uint32_t option_id;
	uint16_t op;
	uint16_t __reserved;
	uint32_t object_id;
	iopf_aligned_u64 val64;
};
#define IOMMU_OPTION IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)

enum iommufd_hwpt_alloc_flags {
	IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0,
	IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1,
	IOMMU_HWPT_FAULT_ID_VALID = 1 << 2,
	IOMMU_HWPT_ALLOC_PASID = 1 << 3,
};

enum iommu_hwpt_vtd_s1_flags {
	IOMMU_VTD_S1_SRE = 1 << 0,
	IOMMU_VTD_S1_EAFE = 1 << 1,
	IOMMU_VTD_S1_WPE = 1 << 2,
};

struct iommu_hwpt_vtd_s1 {
	iopf_aligned_u64 flags;
	iopf_aligned_u64 pgtbl_addr;
	uint32_t addr_width;
	uint32_t __reserved;
};

enum iommu_hwpt_data_type {
	IOMMU_HWPT_DATA_NONE = 0,
	IOMMU_HWPT_DATA_VTD_S1 = 1,
	IOMMU_HWPT_DATA_ARM_SMMUV3 = 2,
};

struct iommu_hwpt_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t pt_id;
	uint32_t out_hwpt_id;
	uint32_t __reserved;
	uint32_t data_type;
	uint32_t data_len;
	iopf_aligned_u64 data_uptr;
	uint32_t fault_id;
	uint32_t __reserved2;
};
#define IOMMU_HWPT_ALLOC IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)

enum iommu_hw_info_vtd_flags {
	IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0,
};

struct iommu_hw_info_vtd {
	uint32_t flags;
	uint32_t __reserved;
	iopf_aligned_u64 cap_reg;
	iopf_aligned_u64 ecap_reg;
};

enum iommu_hw_info_type {
	IOMMU_HW_INFO_TYPE_NONE = 0,
	IOMMU_HW_INFO_TYPE_DEFAULT = 0,
	IOMMU_HW_INFO_TYPE_INTEL_VTD = 1,
	IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2,
	IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3,
};

enum iommufd_hw_capabilities {
	IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0,
	IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1,
	IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2,
};

enum iommufd_hw_info_flags {
	IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0,
};

struct iommu_hw_info {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t data_len;
	iopf_aligned_u64 data_uptr;
	union {
		uint32_t in_data_type;
		uint32_t out_data_type;
	};
	uint8_t out_max_pasid_log2;
	uint8_t __reserved[3];
	iopf_aligned_u64 out_capabilities;
};
#define IOMMU_GET_HW_INFO IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)

enum iommu_hwpt_invalidate_data_type {
	IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0,
	IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1,
};

enum iommu_hwpt_vtd_s1_invalidate_flags {
	IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0,
};

struct iommu_hwpt_vtd_s1_invalidate {
	iopf_aligned_u64 addr;
	iopf_aligned_u64 npages;
	uint32_t flags;
	uint32_t __reserved;
};

struct iommu_hwpt_invalidate {
	uint32_t size;
	uint32_t hwpt_id;
	iopf_aligned_u64 data_uptr;
	uint32_t data_type;
	uint32_t entry_len;
	uint32_t entry_num;
	uint32_t __reserved;
};
#define IOMMU_HWPT_INVALIDATE IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)

enum iommu_hwpt_pgfault_flags {
	IOMMU_PGFAULT_FLAGS_PASID_VALID = (1 << 0),
	IOMMU_PGFAULT_FLAGS_LAST_PAGE = (1 << 1),
};

enum iommu_hwpt_pgfault_perm {
	IOMMU_PGFAULT_PERM_READ = (1 << 0),
	IOMMU_PGFAULT_PERM_WRITE = (1 << 1),
	IOMMU_PGFAULT_PERM_EXEC = (1 << 2),
	IOMMU_PGFAULT_PERM_PRIV = (1 << 3),
};

struct iommu_hwpt_pgfault {
	uint32_t flags;
	uint32_t dev_id;
	uint32_t pasid;
	uint32_t grpid;
	uint32_t perm;
	uint32_t __reserved;
	iopf_aligned_u64 addr;
	uint32_t length;
	uint32_t cookie;
};

enum iommufd_page_response_code {
	IOMMUFD_PAGE_RESP_SUCCESS = 0,
	IOMMUFD_PAGE_RESP_INVALID = 1,
};

struct iommu_hwpt_page_response {
	uint32_t cookie;
	uint32_t code;
};

struct iommu_fault_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_fault_id;
	uint32_t out_fault_fd;
};
#define IOMMU_FAULT_QUEUE_ALLOC IOPF_IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)

#endif /* !IOPF_SYSTEM_IOMMUFD_H */

/*
 * Not a uAPI name: the kernel copies the io-pgfault core's flags into the record raw,
 * and VT-d sets this one on every request that had a PASID (intel/prq.c), so records
 * of a PASID request carry flags 5 (partial) or 7 (last).
 */
#define IOPF_PGFAULT_FLAGS_NEEDS_PASID (1 << 2)

#ifndef IOPF_SYSTEM_VFIO_H

#define VFIO_TYPE (';')
#define VFIO_BASE 100

struct vfio_device_info {
	uint32_t argsz;
	uint32_t flags;
#define VFIO_DEVICE_FLAGS_RESET (1 << 0)
#define VFIO_DEVICE_FLAGS_PCI (1 << 1)
#define VFIO_DEVICE_FLAGS_PLATFORM (1 << 2)
#define VFIO_DEVICE_FLAGS_AMBA (1 << 3)
#define VFIO_DEVICE_FLAGS_CCW (1 << 4)
#define VFIO_DEVICE_FLAGS_AP (1 << 5)
#define VFIO_DEVICE_FLAGS_FSL_MC (1 << 6)
#define VFIO_DEVICE_FLAGS_CAPS (1 << 7)
#define VFIO_DEVICE_FLAGS_CDX (1 << 8)
	uint32_t num_regions;
	uint32_t num_irqs;
	uint32_t cap_offset;
	uint32_t pad;
};
#define VFIO_DEVICE_GET_INFO IOPF_IO(VFIO_TYPE, VFIO_BASE + 7)

#define VFIO_DEVICE_RESET IOPF_IO(VFIO_TYPE, VFIO_BASE + 11)

/* vfio-pci's fixed region and IRQ index spaces (VFIO_PCI_NUM_REGIONS, _IRQS). */
enum {
	VFIO_PCI_BAR0_REGION_INDEX,
	VFIO_PCI_BAR1_REGION_INDEX,
	VFIO_PCI_BAR2_REGION_INDEX,
	VFIO_PCI_BAR3_REGION_INDEX,
	VFIO_PCI_BAR4_REGION_INDEX,
	VFIO_PCI_BAR5_REGION_INDEX,
	VFIO_PCI_ROM_REGION_INDEX,
	VFIO_PCI_CONFIG_REGION_INDEX,
	VFIO_PCI_VGA_REGION_INDEX,
	VFIO_PCI_NUM_REGIONS
};

enum {
	VFIO_PCI_INTX_IRQ_INDEX,
	VFIO_PCI_MSI_IRQ_INDEX,
	VFIO_PCI_MSIX_IRQ_INDEX,
	VFIO_PCI_ERR_IRQ_INDEX,
	VFIO_PCI_REQ_IRQ_INDEX,
	VFIO_PCI_NUM_IRQS
};

#endif /* !IOPF_SYSTEM_VFIO_H */

/* The VFIO device cdev (6.6+; PASID attach 6.15; the bind token 6.17). */
#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	uint32_t argsz;
	uint32_t flags;
#define VFIO_DEVICE_BIND_FLAG_TOKEN (1 << 0)
	int32_t iommufd;
	uint32_t out_devid;
	iopf_aligned_u64 token_uuid_ptr;
};
#define VFIO_DEVICE_BIND_IOMMUFD IOPF_IO(VFIO_TYPE, VFIO_BASE + 18)
#endif

#ifndef VFIO_DEVICE_BIND_FLAG_TOKEN
#define VFIO_DEVICE_BIND_FLAG_TOKEN (1 << 0)
#endif

#ifndef VFIO_DEVICE_ATTACH_IOMMUFD_PT
struct vfio_device_attach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
#define VFIO_DEVICE_ATTACH_PASID (1 << 0)
	uint32_t pt_id;
	uint32_t pasid;
};
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT IOPF_IO(VFIO_TYPE, VFIO_BASE + 19)

struct vfio_device_detach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
#define VFIO_DEVICE_DETACH_PASID (1 << 0)
	uint32_t pasid;
};
#define VFIO_DEVICE_DETACH_IOMMUFD_PT IOPF_IO(VFIO_TYPE, VFIO_BASE + 20)
#endif

#ifndef VFIO_DEVICE_ATTACH_PASID
#define VFIO_DEVICE_ATTACH_PASID (1 << 0)
#define VFIO_DEVICE_DETACH_PASID (1 << 0)
#endif

/* --- the facts, pinned ------------------------------------------------------------ */

#ifdef __cplusplus
#define IOPF_ASSERT static_assert
#else
#define IOPF_ASSERT _Static_assert
#endif

#define IOPF_UAPI_AT(type, field, off) \
	IOPF_ASSERT(offsetof(struct type, field) == (off), #type "." #field " at " #off)
#define IOPF_UAPI_SIZE(type, sz) \
	IOPF_ASSERT(sizeof(struct type) == (sz), "sizeof(struct " #type ") == " #sz)

IOPF_ASSERT(IOMMUFD_TYPE == 0x3B, "IOMMUFD_TYPE is ';'");
IOPF_ASSERT(IOMMU_DESTROY == 0x3B80, "IOMMU_DESTROY");
IOPF_ASSERT(IOMMU_IOAS_ALLOC == 0x3B81, "IOMMU_IOAS_ALLOC");
IOPF_ASSERT(IOMMU_IOAS_MAP == 0x3B85, "IOMMU_IOAS_MAP");
IOPF_ASSERT(IOMMU_IOAS_UNMAP == 0x3B86, "IOMMU_IOAS_UNMAP");
IOPF_ASSERT(IOMMU_HWPT_ALLOC == 0x3B89, "IOMMU_HWPT_ALLOC");
IOPF_ASSERT(IOMMU_GET_HW_INFO == 0x3B8A, "IOMMU_GET_HW_INFO");
IOPF_ASSERT(IOMMU_HWPT_INVALIDATE == 0x3B8D, "IOMMU_HWPT_INVALIDATE");
IOPF_ASSERT(IOMMU_FAULT_QUEUE_ALLOC == 0x3B8E, "IOMMU_FAULT_QUEUE_ALLOC");
IOPF_ASSERT(VFIO_TYPE == 0x3B && VFIO_BASE == 100, "VFIO_TYPE, VFIO_BASE");
IOPF_ASSERT(VFIO_DEVICE_GET_INFO == 0x3B6B, "VFIO_DEVICE_GET_INFO is VFIO_BASE + 7");
IOPF_ASSERT(VFIO_DEVICE_RESET == 0x3B6F, "VFIO_DEVICE_RESET is VFIO_BASE + 11");
IOPF_ASSERT(VFIO_DEVICE_BIND_IOMMUFD == 0x3B76, "VFIO_DEVICE_BIND_IOMMUFD is VFIO_BASE + 18");
IOPF_ASSERT(VFIO_DEVICE_ATTACH_IOMMUFD_PT == 0x3B77, "VFIO_DEVICE_ATTACH_IOMMUFD_PT is + 19");
IOPF_ASSERT(VFIO_DEVICE_DETACH_IOMMUFD_PT == 0x3B78, "VFIO_DEVICE_DETACH_IOMMUFD_PT is + 20");

IOPF_ASSERT(IOMMU_IOAS_MAP_FIXED_IOVA == 1 && IOMMU_IOAS_MAP_WRITEABLE == 2 &&
	       IOMMU_IOAS_MAP_READABLE == 4, "enum iommufd_ioas_map_flags");
IOPF_ASSERT(IOMMU_HWPT_ALLOC_NEST_PARENT == 1 && IOMMU_HWPT_ALLOC_DIRTY_TRACKING == 2 &&
	       IOMMU_HWPT_FAULT_ID_VALID == 4 && IOMMU_HWPT_ALLOC_PASID == 8,
	       "enum iommufd_hwpt_alloc_flags");
IOPF_ASSERT(IOMMU_HWPT_DATA_NONE == 0 && IOMMU_HWPT_DATA_VTD_S1 == 1,
	       "enum iommu_hwpt_data_type");
IOPF_ASSERT(IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 == 0 && IOMMU_VTD_INV_FLAGS_LEAF == 1,
	       "VT-d stage-1 invalidation");
IOPF_ASSERT(IOMMU_HW_INFO_TYPE_INTEL_VTD == 1 && IOMMU_HW_INFO_FLAG_INPUT_TYPE == 1,
	       "enum iommu_hw_info_type, iommufd_hw_info_flags");
IOPF_ASSERT(IOMMU_PGFAULT_FLAGS_PASID_VALID == 1 && IOMMU_PGFAULT_FLAGS_LAST_PAGE == 2,
	       "enum iommu_hwpt_pgfault_flags");
IOPF_ASSERT(IOMMU_PGFAULT_PERM_READ == 1 && IOMMU_PGFAULT_PERM_WRITE == 2 &&
	       IOMMU_PGFAULT_PERM_EXEC == 4 && IOMMU_PGFAULT_PERM_PRIV == 8,
	       "enum iommu_hwpt_pgfault_perm");
IOPF_ASSERT(IOMMUFD_PAGE_RESP_SUCCESS == 0 && IOMMUFD_PAGE_RESP_INVALID == 1,
	       "enum iommufd_page_response_code");
IOPF_ASSERT(VFIO_DEVICE_ATTACH_PASID == 1 && VFIO_DEVICE_DETACH_PASID == 1 &&
	       VFIO_DEVICE_BIND_FLAG_TOKEN == 1, "VFIO cdev flags");
IOPF_ASSERT(VFIO_DEVICE_FLAGS_RESET == 1 && VFIO_DEVICE_FLAGS_PCI == 2 &&
	       VFIO_DEVICE_FLAGS_CAPS == 128, "VFIO_DEVICE_FLAGS_*");
IOPF_ASSERT(VFIO_PCI_NUM_REGIONS == 9 && VFIO_PCI_NUM_IRQS == 5, "vfio-pci indexes");

IOPF_UAPI_SIZE(iommu_destroy, 8);
IOPF_UAPI_AT(iommu_destroy, id, 4);

IOPF_UAPI_SIZE(iommu_ioas_alloc, 12);
IOPF_UAPI_AT(iommu_ioas_alloc, flags, 4);
IOPF_UAPI_AT(iommu_ioas_alloc, out_ioas_id, 8);

IOPF_UAPI_SIZE(iommu_ioas_map, 40);
IOPF_UAPI_AT(iommu_ioas_map, flags, 4);
IOPF_UAPI_AT(iommu_ioas_map, ioas_id, 8);
IOPF_UAPI_AT(iommu_ioas_map, __reserved, 12);
IOPF_UAPI_AT(iommu_ioas_map, user_va, 16);
IOPF_UAPI_AT(iommu_ioas_map, length, 24);
IOPF_UAPI_AT(iommu_ioas_map, iova, 32);

IOPF_UAPI_SIZE(iommu_ioas_unmap, 24);
IOPF_UAPI_AT(iommu_ioas_unmap, ioas_id, 4);
IOPF_UAPI_AT(iommu_ioas_unmap, iova, 8);
IOPF_UAPI_AT(iommu_ioas_unmap, length, 16);

IOPF_ASSERT(IOMMU_IOAS_ALLOW_IOVAS == 0x3B82, "IOMMU_IOAS_ALLOW_IOVAS");
IOPF_ASSERT(IOMMU_IOAS_COPY == 0x3B83, "IOMMU_IOAS_COPY");
IOPF_ASSERT(IOMMU_IOAS_IOVA_RANGES == 0x3B84, "IOMMU_IOAS_IOVA_RANGES");
IOPF_ASSERT(IOMMU_OPTION == 0x3B87, "IOMMU_OPTION");
IOPF_ASSERT(IOMMU_IOAS_MAP_FILE == 0x3B8F, "IOMMU_IOAS_MAP_FILE");
IOPF_ASSERT(IOMMU_OPTION_RLIMIT_MODE == 0 && IOMMU_OPTION_HUGE_PAGES == 1 &&
	       IOMMU_OPTION_OP_SET == 0 && IOMMU_OPTION_OP_GET == 1, "enum iommufd_option(_ops)");

IOPF_UAPI_SIZE(iommu_iova_range, 16);
IOPF_UAPI_AT(iommu_iova_range, start, 0);
IOPF_UAPI_AT(iommu_iova_range, last, 8);

IOPF_UAPI_SIZE(iommu_ioas_iova_ranges, 32);
IOPF_UAPI_AT(iommu_ioas_iova_ranges, ioas_id, 4);
IOPF_UAPI_AT(iommu_ioas_iova_ranges, num_iovas, 8);
IOPF_UAPI_AT(iommu_ioas_iova_ranges, __reserved, 12);
IOPF_UAPI_AT(iommu_ioas_iova_ranges, allowed_iovas, 16);
IOPF_UAPI_AT(iommu_ioas_iova_ranges, out_iova_alignment, 24);

IOPF_UAPI_SIZE(iommu_ioas_allow_iovas, 24);
IOPF_UAPI_AT(iommu_ioas_allow_iovas, ioas_id, 4);
IOPF_UAPI_AT(iommu_ioas_allow_iovas, num_iovas, 8);
IOPF_UAPI_AT(iommu_ioas_allow_iovas, __reserved, 12);
IOPF_UAPI_AT(iommu_ioas_allow_iovas, allowed_iovas, 16);

IOPF_UAPI_SIZE(iommu_ioas_copy, 40);
IOPF_UAPI_AT(iommu_ioas_copy, flags, 4);
IOPF_UAPI_AT(iommu_ioas_copy, dst_ioas_id, 8);
IOPF_UAPI_AT(iommu_ioas_copy, src_ioas_id, 12);
IOPF_UAPI_AT(iommu_ioas_copy, length, 16);
IOPF_UAPI_AT(iommu_ioas_copy, dst_iova, 24);
IOPF_UAPI_AT(iommu_ioas_copy, src_iova, 32);

IOPF_UAPI_SIZE(iommu_ioas_map_file, 40);
IOPF_UAPI_AT(iommu_ioas_map_file, flags, 4);
IOPF_UAPI_AT(iommu_ioas_map_file, ioas_id, 8);
IOPF_UAPI_AT(iommu_ioas_map_file, fd, 12);
IOPF_UAPI_AT(iommu_ioas_map_file, start, 16);
IOPF_UAPI_AT(iommu_ioas_map_file, length, 24);
IOPF_UAPI_AT(iommu_ioas_map_file, iova, 32);

IOPF_UAPI_SIZE(iommu_option, 24);
IOPF_UAPI_AT(iommu_option, option_id, 4);
IOPF_UAPI_AT(iommu_option, op, 8);
IOPF_UAPI_AT(iommu_option, __reserved, 10);
IOPF_UAPI_AT(iommu_option, object_id, 12);
IOPF_UAPI_AT(iommu_option, val64, 16);

IOPF_UAPI_SIZE(iommu_hwpt_vtd_s1, 24);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1, flags, 0);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1, pgtbl_addr, 8);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1, addr_width, 16);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1, __reserved, 20);

IOPF_UAPI_SIZE(iommu_hwpt_alloc, 48);
IOPF_UAPI_AT(iommu_hwpt_alloc, flags, 4);
IOPF_UAPI_AT(iommu_hwpt_alloc, dev_id, 8);
IOPF_UAPI_AT(iommu_hwpt_alloc, pt_id, 12);
IOPF_UAPI_AT(iommu_hwpt_alloc, out_hwpt_id, 16);
IOPF_UAPI_AT(iommu_hwpt_alloc, __reserved, 20);
IOPF_UAPI_AT(iommu_hwpt_alloc, data_type, 24);
IOPF_UAPI_AT(iommu_hwpt_alloc, data_len, 28);
IOPF_UAPI_AT(iommu_hwpt_alloc, data_uptr, 32);
IOPF_UAPI_AT(iommu_hwpt_alloc, fault_id, 40);
IOPF_UAPI_AT(iommu_hwpt_alloc, __reserved2, 44);

IOPF_UAPI_SIZE(iommu_hw_info_vtd, 24);
IOPF_UAPI_AT(iommu_hw_info_vtd, flags, 0);
IOPF_UAPI_AT(iommu_hw_info_vtd, __reserved, 4);
IOPF_UAPI_AT(iommu_hw_info_vtd, cap_reg, 8);
IOPF_UAPI_AT(iommu_hw_info_vtd, ecap_reg, 16);

IOPF_UAPI_SIZE(iommu_hw_info, 40);
IOPF_UAPI_AT(iommu_hw_info, flags, 4);
IOPF_UAPI_AT(iommu_hw_info, dev_id, 8);
IOPF_UAPI_AT(iommu_hw_info, data_len, 12);
IOPF_UAPI_AT(iommu_hw_info, data_uptr, 16);
IOPF_UAPI_AT(iommu_hw_info, in_data_type, 24);
IOPF_UAPI_AT(iommu_hw_info, out_data_type, 24);
IOPF_UAPI_AT(iommu_hw_info, out_max_pasid_log2, 28);
IOPF_UAPI_AT(iommu_hw_info, __reserved, 29);
IOPF_UAPI_AT(iommu_hw_info, out_capabilities, 32);

IOPF_UAPI_SIZE(iommu_hwpt_vtd_s1_invalidate, 24);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1_invalidate, addr, 0);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1_invalidate, npages, 8);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1_invalidate, flags, 16);
IOPF_UAPI_AT(iommu_hwpt_vtd_s1_invalidate, __reserved, 20);

IOPF_UAPI_SIZE(iommu_hwpt_invalidate, 32);
IOPF_UAPI_AT(iommu_hwpt_invalidate, hwpt_id, 4);
IOPF_UAPI_AT(iommu_hwpt_invalidate, data_uptr, 8);
IOPF_UAPI_AT(iommu_hwpt_invalidate, data_type, 16);
IOPF_UAPI_AT(iommu_hwpt_invalidate, entry_len, 20);
IOPF_UAPI_AT(iommu_hwpt_invalidate, entry_num, 24);
IOPF_UAPI_AT(iommu_hwpt_invalidate, __reserved, 28);

IOPF_UAPI_SIZE(iommu_hwpt_pgfault, 40);
IOPF_UAPI_AT(iommu_hwpt_pgfault, flags, 0);
IOPF_UAPI_AT(iommu_hwpt_pgfault, dev_id, 4);
IOPF_UAPI_AT(iommu_hwpt_pgfault, pasid, 8);
IOPF_UAPI_AT(iommu_hwpt_pgfault, grpid, 12);
IOPF_UAPI_AT(iommu_hwpt_pgfault, perm, 16);
IOPF_UAPI_AT(iommu_hwpt_pgfault, __reserved, 20);
IOPF_UAPI_AT(iommu_hwpt_pgfault, addr, 24);
IOPF_UAPI_AT(iommu_hwpt_pgfault, length, 32);
IOPF_UAPI_AT(iommu_hwpt_pgfault, cookie, 36);

IOPF_UAPI_SIZE(iommu_hwpt_page_response, 8);
IOPF_UAPI_AT(iommu_hwpt_page_response, cookie, 0);
IOPF_UAPI_AT(iommu_hwpt_page_response, code, 4);

IOPF_UAPI_SIZE(iommu_fault_alloc, 16);
IOPF_UAPI_AT(iommu_fault_alloc, flags, 4);
IOPF_UAPI_AT(iommu_fault_alloc, out_fault_id, 8);
IOPF_UAPI_AT(iommu_fault_alloc, out_fault_fd, 12);

#ifndef IOPF_SYSTEM_VFIO_H /* `pad` came after cap_offset; older headers end at 20 */
IOPF_UAPI_SIZE(vfio_device_info, 24);
#endif
IOPF_UAPI_AT(vfio_device_info, flags, 4);
IOPF_UAPI_AT(vfio_device_info, num_regions, 8);
IOPF_UAPI_AT(vfio_device_info, num_irqs, 12);
IOPF_UAPI_AT(vfio_device_info, cap_offset, 16);

IOPF_UAPI_AT(vfio_device_bind_iommufd, flags, 4);
IOPF_UAPI_AT(vfio_device_bind_iommufd, iommufd, 8);
IOPF_UAPI_AT(vfio_device_bind_iommufd, out_devid, 12);
#ifndef IOPF_SYSTEM_VFIO_H /* token_uuid_ptr is 6.17's; the 16 bytes before it are the ABI */
IOPF_UAPI_SIZE(vfio_device_bind_iommufd, 24);
IOPF_UAPI_AT(vfio_device_bind_iommufd, token_uuid_ptr, 16);
#endif

IOPF_UAPI_SIZE(vfio_device_attach_iommufd_pt, 16);
IOPF_UAPI_AT(vfio_device_attach_iommufd_pt, flags, 4);
IOPF_UAPI_AT(vfio_device_attach_iommufd_pt, pt_id, 8);
IOPF_UAPI_AT(vfio_device_attach_iommufd_pt, pasid, 12);

IOPF_UAPI_SIZE(vfio_device_detach_iommufd_pt, 12);
IOPF_UAPI_AT(vfio_device_detach_iommufd_pt, flags, 4);
IOPF_UAPI_AT(vfio_device_detach_iommufd_pt, pasid, 8);

#endif /* IOPF_UAPI_H */
