// SPDX-License-Identifier: MIT
/*
 * iopf-vmm-c: setup and teardown. A C program learns nothing from iopfd's hello, so it
 * asks the uAPI as a real VMM does: it tries a fault-capable paging HWPT that PASIDs may
 * share (6.15+), then one without the PASID flag (6.13/6.14), then a nested HWPT on a
 * nesting parent (6.12, where a paging HWPT cannot be fault-capable), moving on only
 * when the kernel says EOPNOTSUPP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "iopf.h"
#include "iopf_uapi.h"
#include "vmm.h"

#define PROBE_MAX_INDEX 64

static void die(const char *what)
{
	fprintf(stderr, "iopf-vmm-c: %s: %s\n", what, strerror(errno));
	if (errno == ENOENT || errno == ECONNREFUSED)
		fprintf(stderr, "iopf-vmm-c: is iopfd running, $IOPFD_SOCKET set, and "
				"libiopf-preload.so in LD_PRELOAD?\n");
	exit(1);
}

static uint32_t hwpt_alloc(struct vmm *v, uint32_t dev_id, uint32_t pt_id, uint32_t flags,
			   bool s1, int *err)
{
	struct iommu_hwpt_vtd_s1 data = { .addr_width = 48 };
	struct iommu_hwpt_alloc cmd = {
		.size = sizeof(cmd), .flags = flags, .dev_id = dev_id, .pt_id = pt_id,
		.fault_id = v->fault_id,
		.data_type = s1 ? IOMMU_HWPT_DATA_VTD_S1 : IOMMU_HWPT_DATA_NONE,
		.data_len = s1 ? sizeof(data) : 0, .data_uptr = s1 ? (uintptr_t)&data : 0,
	};

	*err = ioctl(v->iommufd, IOMMU_HWPT_ALLOC, &cmd) ? errno : 0;
	return *err ? 0 : cmd.out_hwpt_id;
}

static void destroy(struct vmm *v, uint32_t id)
{
	struct iommu_destroy cmd = { .size = sizeof(cmd), .id = id };

	if (id && ioctl(v->iommufd, IOMMU_DESTROY, &cmd))
		vmm_violate(v, "IOMMU_DESTROY %u: %s", id, strerror(errno));
}

/* The fault-capable HWPT, newest uAPI first. 0, or an errno other than EOPNOTSUPP. */
static int alloc_fault_hwpt(struct vmm *v, struct vmm_device *d, bool want_pasid, bool *pasid)
{
	static const struct {
		bool nested, pasid;
	} attempts[] = { { false, true }, { false, false }, { true, true }, { true, false } };
	int err = EOPNOTSUPP;

	for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++) {
		uint32_t flags = IOMMU_HWPT_FAULT_ID_VALID |
				 (attempts[i].pasid ? IOMMU_HWPT_ALLOC_PASID : 0);
		if (attempts[i].pasid && !want_pasid)
			continue;
		if (!attempts[i].nested && (v->opt.nested || v->nested))
			continue;
		if (!attempts[i].nested) {
			d->hwpt = hwpt_alloc(v, d->dev_id, v->ioas, flags, false, &err);
		} else {
			if (!d->parent)
				d->parent = hwpt_alloc(v, d->dev_id, v->ioas,
						       IOMMU_HWPT_ALLOC_NEST_PARENT, false, &err);
			if (d->parent)
				d->hwpt = hwpt_alloc(v, d->dev_id, d->parent, flags, true, &err);
		}
		if (d->hwpt) {
			v->nested = attempts[i].nested;
			*pasid = attempts[i].pasid;
			return 0;
		}
		if (err != EOPNOTSUPP)
			break;
	}
	destroy(v, d->parent);
	d->parent = 0;
	return err;
}

static int attach(int fd, uint32_t pt_id, int pasid)
{
	struct vfio_device_attach_iommufd_pt cmd = {
		.argsz = sizeof(cmd), .pt_id = pt_id,
		.flags = pasid >= 0 ? VFIO_DEVICE_ATTACH_PASID : 0, .pasid = pasid >= 0 ? (uint32_t)pasid : 0,
	};

	return ioctl(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &cmd) ? errno : 0;
}

static int detach(int fd, int pasid)
{
	struct vfio_device_detach_iommufd_pt cmd = {
		.argsz = sizeof(cmd), .flags = pasid >= 0 ? VFIO_DEVICE_DETACH_PASID : 0,
		.pasid = pasid >= 0 ? (uint32_t)pasid : 0,
	};

	return ioctl(fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &cmd) ? errno : 0;
}

/* One function: bound, with its fault-capable HWPT on the RID and PASIDs 1..n.
 * Returns false (and leaves nothing behind) when it cannot take part. */
static bool setup_device(struct vmm *v, int index, bool explicit)
{
	struct vmm_device *d = &v->devs[v->ndevs];
	char path[64];
	bool pasid = false;
	int err;

	memset(d, 0, sizeof(*d));
	d->index = index;
	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%d", index);
	d->fd = open(path, O_RDWR | O_CLOEXEC);
	if (d->fd < 0) {
		if (explicit)
			fprintf(stderr, "iopf-vmm-c: %s: %s\n", path, strerror(errno));
		return false;
	}
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = v->iommufd };
	if (ioctl(d->fd, VFIO_DEVICE_BIND_IOMMUFD, &bind)) {
		if (explicit)
			fprintf(stderr, "iopf-vmm-c: bind %s: %s\n", path, strerror(errno));
		close(d->fd);
		return false;
	}
	d->dev_id = bind.out_devid;

	/* The PASID width, where the kernel reports it (IOMMU_GET_HW_INFO). */
	struct iommu_hw_info_vtd vtd;
	struct iommu_hw_info info = { .size = sizeof(info), .dev_id = d->dev_id,
				      .data_len = sizeof(vtd), .data_uptr = (uintptr_t)&vtd };
	bool known = ioctl(v->iommufd, IOMMU_GET_HW_INFO, &info) == 0;
	d->pasid_log2 = known ? info.out_max_pasid_log2 : 0;
	bool want_pasid = v->opt.pasids > 0 && (!known || d->pasid_log2 > 0);

	err = alloc_fault_hwpt(v, d, want_pasid, &pasid);
	if (!err)
		err = attach(d->fd, d->hwpt, -1);
	if (err) {
		/* ENODEV: no PRI; EINVAL: a VF (PRI belongs to its PF) */
		if (explicit)
			fprintf(stderr, "iopf-vmm-c: %s: no fault-capable attach: %s\n", path,
				strerror(err));
		destroy(v, d->hwpt);
		destroy(v, d->parent);
		close(d->fd);
		return false;
	}
	for (int p = 1; pasid && p <= v->opt.pasids && p <= VMM_MAX_PASIDS; p++) {
		if (attach(d->fd, d->hwpt, p))
			break;
		d->pasids = p;
	}
	v->ndevs++;
	return true;
}

static void setup(struct vmm *v)
{
	struct iommu_ioas_alloc ioas = { .size = sizeof(ioas) };
	struct iommu_fault_alloc fault = { .size = sizeof(fault) };

	v->iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (v->iommufd < 0)
		die("open /dev/iommu");
	if (ioctl(v->iommufd, IOMMU_IOAS_ALLOC, &ioas))
		die("IOMMU_IOAS_ALLOC");
	v->ioas = ioas.out_ioas_id;
	if (ioctl(v->iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fault))
		die("IOMMU_FAULT_QUEUE_ALLOC");
	v->fault_id = fault.out_fault_id;
	v->fault_fd = (int)fault.out_fault_fd;

	if (v->opt.ndevices) {
		for (int i = 0; i < v->opt.ndevices && v->ndevs < VMM_MAX_DEVICES; i++)
			if (!setup_device(v, v->opt.devices[i], true))
				exit(1);
	} else {
		for (int i = 0; i < PROBE_MAX_INDEX && v->ndevs < v->opt.max_devices; i++)
			setup_device(v, i, false);
	}
	if (!v->ndevs) {
		fprintf(stderr, "iopf-vmm-c: no function accepted a fault-capable HWPT\n");
		exit(1);
	}

	uint64_t span = (uint64_t)v->opt.pages * VMM_PAGE;
	for (int i = 0; i < v->ndevs; i++) {
		for (int p = -1; p <= v->devs[i].pasids; p++) {
			if (p == 0)
				continue;
			struct vmm_stream *s = &v->streams[v->nstreams];
			s->dev = &v->devs[i];
			s->pasid = p;
			s->iova = VMM_IOVA_BASE + (uint64_t)v->nstreams * VMM_IOVA_STRIDE;
			s->ram_off = (uint64_t)v->nstreams * span;
			s->touched = calloc(v->opt.pages, 1);
			if (!s->touched)
				die("calloc");
			v->nstreams++;
		}
	}
	v->ram_size = (uint64_t)v->nstreams * span;
	v->ram = mmap(NULL, v->ram_size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (v->ram == MAP_FAILED)
		die("mmap guest RAM");
}

static void teardown(struct vmm *v)
{
	for (int i = 0; i < v->ndevs; i++) {
		struct vmm_device *d = &v->devs[i];
		for (int p = 1; p <= d->pasids; p++)
			if (detach(d->fd, p))
				vmm_violate(v, "detach pasid %d of vfio%d: %s", p, d->index, strerror(errno));
		if (detach(d->fd, -1))
			vmm_violate(v, "detach vfio%d: %s", d->index, strerror(errno));
		destroy(v, d->hwpt);
		destroy(v, d->parent);
		close(d->fd);
	}
	close(v->fault_fd);
	destroy(v, v->fault_id);
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = v->ioas, .length = UINT64_MAX };
	if (ioctl(v->iommufd, IOMMU_IOAS_UNMAP, &u))
		vmm_violate(v, "IOMMU_IOAS_UNMAP: %s", strerror(errno));
	destroy(v, v->ioas);
	close(v->iommufd);
	munmap(v->ram, v->ram_size);
	for (int i = 0; i < v->nstreams; i++)
		free(v->streams[i].touched);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: iopf-vmm-c [options]   (under LD_PRELOAD=libiopf-preload.so)\n"
		"  --socket PATH      iopfd's socket (default: $IOPFD_SOCKET)\n"
		"  --device N         use /dev/vfio/devices/vfioN (repeat; default: probe all)\n"
		"  --max-devices N    when probing, at most N functions (default 4)\n"
		"  --pasids N         PASIDs attached per function besides the RID (default 2)\n"
		"  --nested           nested translation (a guest stage-1 table) from the start\n"
		"  --pattern P        sequential | random | strided (default sequential)\n"
		"  --pages N          buffer pages per DMA stream (default 256)\n"
		"  --dma-pages N      pages per transfer (default 4)\n"
		"  --stride N         run stride of the strided pattern (default 8)\n"
		"  --duration S       seconds of epochs (default 0: one pass)\n"
		"  --seed N           workload seed (default 1)\n"
		"  --bad-every N      every Nth transfer hits an address the guest lacks (default 50)\n"
		"  --progress         a progress line per second on stderr\n");
}

static unsigned parse_uint(const char *s, const char *what)
{
	char *end;
	unsigned long v = strtoul(s, &end, 0);

	if (!*s || *end || v > 1u << 30) {
		fprintf(stderr, "iopf-vmm-c: bad %s: %s\n", what, s);
		exit(2);
	}
	return (unsigned)v;
}

static void parse(struct vmm_options *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 'S' },
		{ "device", required_argument, NULL, 'd' },
		{ "max-devices", required_argument, NULL, 'm' },
		{ "pasids", required_argument, NULL, 'P' },
		{ "nested", no_argument, NULL, 'n' },
		{ "pattern", required_argument, NULL, 'p' },
		{ "pages", required_argument, NULL, 'N' },
		{ "dma-pages", required_argument, NULL, 'D' },
		{ "stride", required_argument, NULL, 's' },
		{ "duration", required_argument, NULL, 't' },
		{ "seed", required_argument, NULL, 'r' },
		{ "bad-every", required_argument, NULL, 'b' },
		{ "progress", no_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	*o = (struct vmm_options){ .max_devices = 4, .pasids = 2, .pattern = "sequential",
				   .pages = 256, .dma_pages = 4, .stride = 8, .seed = 1,
				   .bad_every = 50 };
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'S': setenv("IOPFD_SOCKET", optarg, 1); break;
		case 'd':
			if (o->ndevices < VMM_MAX_DEVICES)
				o->devices[o->ndevices++] = (int)parse_uint(optarg, "device");
			break;
		case 'm': o->max_devices = (int)parse_uint(optarg, "max-devices"); break;
		case 'P': o->pasids = (int)parse_uint(optarg, "pasids"); break;
		case 'n': o->nested = true; break;
		case 'p': o->pattern = optarg; break;
		case 'N': o->pages = parse_uint(optarg, "pages"); break;
		case 'D': o->dma_pages = parse_uint(optarg, "dma-pages"); break;
		case 's': o->stride = parse_uint(optarg, "stride"); break;
		case 't': o->duration = atof(optarg); break;
		case 'r': o->seed = parse_uint(optarg, "seed"); break;
		case 'b': o->bad_every = parse_uint(optarg, "bad-every"); break;
		case 'g': o->progress = true; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind != argc || !o->pages || !o->dma_pages || o->dma_pages > 256 ||
	    o->max_devices > VMM_MAX_DEVICES ||
	    (strcmp(o->pattern, "sequential") && strcmp(o->pattern, "random") &&
	     strcmp(o->pattern, "strided"))) {
		usage(stderr);
		exit(2);
	}
}

int main(int argc, char **argv)
{
	static struct vmm v;
	pthread_t fault_thread;

	parse(&v.opt, argc, argv);
	pthread_mutex_init(&v.st.lock, NULL);
	setup(&v);
	if (pthread_create(&fault_thread, NULL, vmm_fault_main, &v))
		die("pthread_create");
	vmm_run_workload(&v);
	atomic_store(&v.stop_faults, true);
	pthread_join(fault_thread, NULL);
	if (v.st.groups != v.st.success + v.st.invalid)
		vmm_violate(&v, "groups read %llu != answered %llu", (unsigned long long)v.st.groups,
			    (unsigned long long)(v.st.success + v.st.invalid));
	teardown(&v);
	vmm_print_summary(&v);
	return v.st.nviolations ? 1 : 0;
}
