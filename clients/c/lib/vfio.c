// SPDX-License-Identifier: MIT
/*
 * /dev/vfio/devices/vfioN: the VFIO device cdev of drivers/vfio/device_cdev.c and
 * vfio_main.c, and the vfio-pci ioctls iopfd has a meaning for. vfioN is the N-th
 * function of the daemon's `devices` list (its `vfio` key where the daemon reports
 * one). Before VFIO_DEVICE_BIND_IOMMUFD every other ioctl is EINVAL
 * (vfio_device_fops_unl_ioctl: access not granted); closing the fd unbinds, which
 * detaches every PASID and the RID first (vfio_iommufd_physical_unbind).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "../include/iopf_uapi.h"
#include "internal.h"

/* --- open: which function is vfioN -------------------------------------------------- */

static bool row_is(const struct mp_obj *row, unsigned index, uint32_t pos)
{
	uint64_t n;

	if (mp_get_u64(mp_map_get(row, "vfio"), &n))
		return n == index;
	return pos == index; /* a daemon without `vfio`: the topology order itself */
}

int vfio_open(struct iopf_file *f, unsigned index)
{
	struct iopf_conn *c;
	struct iopf_reply rep;
	struct mp_buf req;
	const struct mp_obj *rows, *row = NULL;
	uint64_t bits = 0;
	int rc;

	rc = conn_open(&c);
	if (rc)
		return -ENOENT; /* no daemon: no such device node */
	req_start(&req, "devices", 0);
	rc = conn_call(c, &req, &rep);
	if (rc) {
		conn_put(c);
		return rc;
	}
	rows = mp_map_get(rep.result, "devices");
	for (uint32_t i = 0; rows && rows->type == MP_ARRAY && i < rows->len && !row; i++)
		if (row_is(&rows->v.items[i], index, i))
			row = &rows->v.items[i];
	if (!row || mp_str_eq(mp_map_get(row, "state"), "removed")) {
		rc = -ENOENT; /* devtmpfs has no node for it */
	} else {
		mp_get_str(mp_map_get(row, "rid"), f->u.vfio.rid, sizeof(f->u.vfio.rid));
		mp_get_u64(mp_map_get(row, "pasid_bits"), &bits);
		f->u.vfio.index = index;
		f->u.vfio.pasid_bits = (unsigned)bits;
		mp_get_bool(mp_map_get(row, "pri"), &f->u.vfio.pri);
		f->u.vfio.is_vf = mp_map_get(row, "pf") && mp_map_get(row, "pf")->type == MP_STR;
		for (uint32_t i = 0; i < rows->len; i++) {
			const struct mp_obj *pf = mp_map_get(&rows->v.items[i], "pf");
			if (mp_str_eq(pf, f->u.vfio.rid))
				f->u.vfio.has_vfs = true;
		}
	}
	reply_free(&rep);
	conn_put(c);
	return rc;
}

/* --- bind and unbind ----------------------------------------------------------------- */

static void wire_unbind(struct iopf_file *f)
{
	struct iopf_ctx *ctx = conn_ctx(f->conn);
	struct mp_buf req;

	req_start(&req, "unbind", 1);
	mp_put_str(&req, "dev_id");
	mp_put_uint(&req, f->u.vfio.dev_id);
	conn_call(f->conn, &req, NULL);
	pthread_mutex_lock(&ctx->lock);
	ctx_del(ctx, f->u.vfio.dev_id);
	pthread_mutex_unlock(&ctx->lock);
	f->u.vfio.bound = false;
	conn_put(f->conn);
	f->conn = NULL;
}

void vfio_release(struct iopf_file *f)
{
	pthread_mutex_lock(&f->lock);
	if (f->u.vfio.bound)
		wire_unbind(f);
	pthread_mutex_unlock(&f->lock);
}

/* vfio_df_ioctl_bind_iommufd(), with the VF token of vfio_pci_core_match_token_uuid(). */
static int vfio_bind(struct iopf_file *f, void *arg)
{
	struct vfio_device_bind_iommufd bind;
	const size_t minsz = offsetof(struct vfio_device_bind_iommufd, out_devid) + sizeof(uint32_t);
	struct iopf_file *ifile;
	struct iopf_reply rep;
	struct iopf_ctx *ctx;
	struct mp_buf req;
	uint32_t argsz;
	int rc;

	rc = get_user_u32(&argsz, arg);
	if (rc)
		return rc;
	if (argsz < minsz)
		return -EINVAL;
	rc = copy_struct_from_user(&bind, sizeof(bind), arg, argsz);
	if (rc)
		return rc;
	if (bind.iommufd < 0 || (bind.flags & ~VFIO_DEVICE_BIND_FLAG_TOKEN))
		return -EINVAL;
	if (f->u.vfio.bound) /* one device cannot be bound twice */
		return -EINVAL;
	if (bind.flags & VFIO_DEVICE_BIND_FLAG_TOKEN) {
		uint8_t uuid[16];
		/* iopfd has no VF tokens: a token is accepted where one could be asked
		 * for (a PF with VFs, or a VF) and is EINVAL elsewhere, as vfio-pci says. */
		if (copy_from_user(uuid, (const void *)(uintptr_t)bind.token_uuid_ptr, sizeof(uuid)))
			return -EFAULT;
		if (!f->u.vfio.is_vf && !f->u.vfio.has_vfs)
			return -EINVAL;
	}
	/* iommufd_ctx_from_fd(): EBADF for no file, EBADFD for a file that is not iommufd. */
	ifile = fdtab_get(bind.iommufd);
	if (!ifile)
		return fcntl(bind.iommufd, F_GETFD) < 0 ? -EBADF : -EBADFD;
	if (ifile->kind != IOPF_IOMMUFD) {
		file_put(ifile);
		return -EBADFD;
	}

	struct iopf_conn *c = file_conn(ifile);
	file_put(ifile);
	if (!c)
		return -EBADFD; /* closed meanwhile */
	req_start(&req, "bind", 1);
	mp_put_str(&req, "rid");
	mp_put_str(&req, f->u.vfio.rid);
	rc = conn_call(c, &req, &rep);
	if (rc) {
		conn_put(c);
		/* Another open of this cdev has it bound: vfio_df_open() refuses a second
		 * cdev open of a device with EINVAL. */
		return rc == -EBUSY ? -EINVAL : rc;
	}
	f->u.vfio.dev_id = (uint32_t)reply_u64(&rep, "dev_id", NULL);
	reply_free(&rep);
	f->conn = c; /* the device holds the context (vfio's iommufd_ctx_get) */
	f->u.vfio.bound = true;

	ctx = conn_ctx(f->conn);
	pthread_mutex_lock(&ctx->lock);
	struct iopf_obj *o = ctx_add(ctx, f->u.vfio.dev_id, OBJ_DEVICE);
	if (o)
		o->pasid_bits = f->u.vfio.pasid_bits;
	pthread_mutex_unlock(&ctx->lock);

	rc = copy_to_user((uint8_t *)arg + offsetof(struct vfio_device_bind_iommufd, out_devid),
			  &f->u.vfio.dev_id, sizeof(uint32_t));
	if (rc || !o) {
		wire_unbind(f);
		return rc ? rc : -ENOMEM;
	}
	return 0;
}

/* --- attach and detach ---------------------------------------------------------------- */

static int wire_detach(struct iopf_file *f, bool pasid_valid, uint32_t pasid)
{
	struct mp_buf req;

	req_start(&req, "detach", pasid_valid ? 2 : 1);
	mp_put_str(&req, "dev_id");
	mp_put_uint(&req, f->u.vfio.dev_id);
	if (pasid_valid) {
		mp_put_str(&req, "pasid");
		mp_put_uint(&req, pasid);
	}
	return conn_call(f->conn, &req, NULL);
}

/* vfio_df_ioctl_attach_pt(): the VFIO ioctls copy what their flags name and ignore
 * the rest of argsz (no E2BIG). Attaching where something is attached replaces it. */
static int vfio_attach(struct iopf_file *f, void *arg)
{
	struct vfio_device_attach_iommufd_pt attach = { 0 };
	const size_t minsz = offsetof(struct vfio_device_attach_iommufd_pt, pt_id) + sizeof(uint32_t);
	bool pasid_valid;
	struct iopf_reply rep;
	struct mp_buf req;
	bool present;
	int rc;

	if (copy_from_user(&attach, arg, minsz))
		return -EFAULT;
	if (attach.argsz < minsz)
		return -EINVAL;
	if (attach.flags & ~VFIO_DEVICE_ATTACH_PASID)
		return -EINVAL;
	pasid_valid = attach.flags & VFIO_DEVICE_ATTACH_PASID;
	if (pasid_valid) {
		if (attach.argsz < sizeof(attach))
			return -EINVAL;
		if (copy_from_user(&attach.pasid, (uint8_t *)arg + minsz, sizeof(uint32_t)))
			return -EFAULT;
	}

	req_start(&req, "attach", pasid_valid ? 3 : 2);
	mp_put_str(&req, "dev_id");
	mp_put_uint(&req, f->u.vfio.dev_id);
	mp_put_str(&req, "pt_id");
	mp_put_uint(&req, attach.pt_id);
	if (pasid_valid) {
		mp_put_str(&req, "pasid");
		mp_put_uint(&req, attach.pasid);
	}
	rc = conn_call(f->conn, &req, &rep);
	if (rc)
		return rc;
	/* With an IOAS as pt_id the kernel reports the HWPT it attached (an automatic
	 * domain); with a HWPT, that HWPT. */
	uint32_t hwpt_id = (uint32_t)reply_u64(&rep, "hwpt_id", &present);
	reply_free(&rep);
	if (present && hwpt_id != attach.pt_id) {
		struct iopf_ctx *ctx = conn_ctx(f->conn);
		pthread_mutex_lock(&ctx->lock);
		ctx_add(ctx, hwpt_id, OBJ_HWPT_PAGING);
		pthread_mutex_unlock(&ctx->lock);
		attach.pt_id = hwpt_id;
	}
	if (copy_to_user((uint8_t *)arg + offsetof(struct vfio_device_attach_iommufd_pt, pt_id),
			 &attach.pt_id, sizeof(uint32_t))) {
		wire_detach(f, pasid_valid, attach.pasid);
		return -EFAULT;
	}
	return 0;
}

/* vfio_df_ioctl_detach_pt(): returns 0 whatever the detach found (nothing attached,
 * a PASID never attached). */
static int vfio_detach(struct iopf_file *f, void *arg)
{
	struct vfio_device_detach_iommufd_pt detach = { 0 };
	const size_t minsz = offsetof(struct vfio_device_detach_iommufd_pt, flags) + sizeof(uint32_t);
	bool pasid_valid;

	if (copy_from_user(&detach, arg, minsz))
		return -EFAULT;
	if (detach.argsz < minsz)
		return -EINVAL;
	if (detach.flags & ~VFIO_DEVICE_DETACH_PASID)
		return -EINVAL;
	pasid_valid = detach.flags & VFIO_DEVICE_DETACH_PASID;
	if (pasid_valid) {
		if (detach.argsz < sizeof(detach))
			return -EINVAL;
		if (copy_from_user(&detach.pasid, (uint8_t *)arg + minsz, sizeof(uint32_t)))
			return -EFAULT;
	}
	wire_detach(f, pasid_valid, detach.pasid);
	return 0;
}

/* --- vfio-pci: GET_INFO and RESET ------------------------------------------------------ */

/* vfio_pci_ioctl_get_info(): a PCI function that can reset, with vfio-pci's fixed
 * region and IRQ indexes and no capability chain. */
static int vfio_get_info(void *arg)
{
	struct vfio_device_info info = { 0 };
	const size_t minsz = offsetof(struct vfio_device_info, num_irqs) + sizeof(uint32_t);

	if (copy_from_user(&info, arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;
	info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
	info.num_regions = VFIO_PCI_NUM_REGIONS;
	info.num_irqs = VFIO_PCI_NUM_IRQS;
	return copy_to_user(arg, &info, info.argsz < sizeof(info) ? info.argsz : sizeof(info));
}

static int vfio_reset(struct iopf_file *f)
{
	struct mp_buf req;

	req_start(&req, "device_reset", 1);
	mp_put_str(&req, "dev_id");
	mp_put_uint(&req, f->u.vfio.dev_id);
	return conn_call(f->conn, &req, NULL);
}

long vfio_ioctl(struct iopf_file *f, unsigned long cmd, void *arg)
{
	int rc;

	pthread_mutex_lock(&f->lock);
	if (cmd == VFIO_DEVICE_BIND_IOMMUFD)
		rc = vfio_bind(f, arg);
	else if (!f->u.vfio.bound)
		rc = -EINVAL;
	else if (cmd == VFIO_DEVICE_ATTACH_IOMMUFD_PT)
		rc = vfio_attach(f, arg);
	else if (cmd == VFIO_DEVICE_DETACH_IOMMUFD_PT)
		rc = vfio_detach(f, arg);
	else if (cmd == VFIO_DEVICE_GET_INFO)
		rc = vfio_get_info(arg);
	else if (cmd == VFIO_DEVICE_RESET)
		rc = vfio_reset(f);
	else
		rc = -ENOTTY; /* vfio_pci_core_ioctl()'s default */
	pthread_mutex_unlock(&f->lock);
	return rc;
}
