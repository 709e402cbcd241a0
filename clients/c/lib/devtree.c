// SPDX-License-Identifier: MIT
/*
 * The device nodes and the sysfs view of the emulated functions, as devtmpfs and sysfs
 * show them: /dev/iommu, /dev/vfio/devices/vfioN, and /sys/bus/pci/devices/<bdf>/ with
 * what a userspace driver reads there (vfio-dev/vfioN, iommu_group, vendor, device,
 * class, driver, physfn, virtfnN). Nothing here touches the real /dev or /sys: a path
 * is resolved against the daemon's `devices` answer, cached per process and fetched
 * again when a name is not in it (a function hot-added, or the first lookup).
 *
 * Numbers (docs/uapi.md): /dev/iommu is misc 10:IOPF_IOMMU_MINOR; vfioN is
 * IOPF_VFIO_MAJOR:N; one IOMMU group per function, numbered as its vfioN.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include "internal.h"

#define MAX_FNS 256
#define MAX_COMPS 24
#define MAX_LINKS 8

struct vfn {
	char rid[16];   /* SSSS:BB:DD.F */
	char pf[16];    /* a VF's PF, else "" */
	unsigned vfio;  /* N of vfioN, and the IOMMU group */
	unsigned pasid_bits;
	bool pri, ats;
	unsigned vf_index; /* a VF: K of its PF's virtfnK */
	unsigned nvfs;     /* a PF: how many VFs */
};

static struct {
	pthread_mutex_t lock;
	struct vfn fns[MAX_FNS];
	size_t n;
	bool fetched; /* at least once */
	bool up;      /* the last fetch reached a daemon */
	time_t born;
} cache = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* --- the daemon's `devices`, cached ------------------------------------------------------ */

static void fetch(void)
{
	struct iopf_conn *c;
	struct iopf_reply rep;
	struct mp_buf req;
	const struct mp_obj *rows;

	cache.fetched = true;
	if (!cache.born)
		cache.born = time(NULL);
	if (conn_open(&c)) {
		cache.up = false;
		cache.n = 0;
		return;
	}
	req_start(&req, "devices", 0);
	if (conn_call(c, &req, &rep)) {
		conn_put(c);
		cache.up = false;
		cache.n = 0;
		return;
	}
	cache.up = true;
	cache.n = 0;
	rows = mp_map_get(rep.result, "devices");
	for (uint32_t i = 0; rows && rows->type == MP_ARRAY && i < rows->len && cache.n < MAX_FNS; i++) {
		const struct mp_obj *row = &rows->v.items[i];
		struct vfn *f = &cache.fns[cache.n];
		uint64_t v = i;

		if (mp_str_eq(mp_map_get(row, "state"), "removed"))
			continue; /* no node, no sysfs directory */
		memset(f, 0, sizeof(*f));
		if (!mp_get_str(mp_map_get(row, "rid"), f->rid, sizeof(f->rid)) || strlen(f->rid) != 12)
			continue;
		mp_get_u64(mp_map_get(row, "vfio"), &v); /* without `vfio`: the row's place */
		f->vfio = (unsigned)v;
		mp_get_str(mp_map_get(row, "pf"), f->pf, sizeof(f->pf));
		v = 0;
		mp_get_u64(mp_map_get(row, "pasid_bits"), &v);
		f->pasid_bits = (unsigned)v;
		mp_get_bool(mp_map_get(row, "pri"), &f->pri);
		mp_get_bool(mp_map_get(row, "ats"), &f->ats);
		cache.n++;
	}
	reply_free(&rep);
	conn_put(c);
	/* virtfnK: the K-th VF of a PF in topology order. */
	for (size_t i = 0; i < cache.n; i++) {
		for (size_t j = 0; j < cache.n; j++) {
			if (cache.fns[j].pf[0] && strcmp(cache.fns[j].pf, cache.fns[i].rid) == 0)
				cache.fns[j].vf_index = cache.fns[i].nvfs++;
		}
	}
}

static const struct vfn *fn_by_rid(const char *rid)
{
	for (size_t i = 0; i < cache.n; i++)
		if (strcmp(cache.fns[i].rid, rid) == 0)
			return &cache.fns[i];
	return NULL;
}

static const struct vfn *fn_by_vfio(unsigned n)
{
	for (size_t i = 0; i < cache.n; i++)
		if (cache.fns[i].vfio == n)
			return &cache.fns[i];
	return NULL;
}

static const struct vfn *vf_of(const struct vfn *pf, unsigned k)
{
	for (size_t i = 0; i < cache.n; i++)
		if (strcmp(cache.fns[i].pf, pf->rid) == 0 && cache.fns[i].vf_index == k)
			return &cache.fns[i];
	return NULL;
}

/* A decimal as the kernel prints it (no sign, no leading zero) after @prefix. */
static bool parse_index(const char *s, const char *prefix, unsigned *out)
{
	size_t len = strlen(prefix);
	unsigned long n = 0;

	if (strncmp(s, prefix, len) != 0)
		return false;
	s += len;
	if (*s < '0' || *s > '9' || (s[0] == '0' && s[1]))
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || n > 1000000)
			return false;
		n = n * 10 + (unsigned long)(*s - '0');
	}
	*out = (unsigned)n;
	return true;
}

/* The PCI ids a function shows: plausible devices of its kind (docs/uapi.md). */
static void ids_of(const struct vfn *f, unsigned *vendor, unsigned *device, unsigned *class)
{
	if (f->pf[0]) { /* a VF: Intel QAT 4xxx VF */
		*vendor = 0x8086, *device = 0x4941, *class = 0x0b4000;
	} else if (f->nvfs) { /* a PF with VFs: Intel QAT 4xxx */
		*vendor = 0x8086, *device = 0x4940, *class = 0x0b4000;
	} else if (f->pri && f->pasid_bits) { /* Intel DSA */
		*vendor = 0x8086, *device = 0x0b25, *class = 0x088000;
	} else if (f->pri) { /* Samsung NVMe */
		*vendor = 0x144d, *device = 0xa80a, *class = 0x010802;
	} else if (f->ats || f->pasid_bits) { /* Intel E810 */
		*vendor = 0x8086, *device = 0x1592, *class = 0x020000;
	} else { /* QEMU's NVMe */
		*vendor = 0x1b36, *device = 0x0010, *class = 0x010802;
	}
}

/* /sys/devices/pciSSSS:BB: a VF sits beside its PF. */
static void parent_dir(const struct vfn *f, char *buf, size_t cap)
{
	const char *rid = f->pf[0] ? f->pf : f->rid;

	snprintf(buf, cap, "pci%.7s", rid);
}

/* --- nodes ----------------------------------------------------------------------------------- */

static void node(struct vnode *vn, enum vnode_type type, enum vnode_fs fs, unsigned mode)
{
	vn->type = type;
	vn->fs = fs;
	vn->mode = mode;
	vn->rdev_major = vn->rdev_minor = 0;
	vn->text[0] = '\0';
}

static void link_to(struct vnode *vn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void link_to(struct vnode *vn, const char *fmt, ...)
{
	va_list ap;

	node(vn, VN_LNK, FS_SYSFS, 0777);
	va_start(ap, fmt);
	vsnprintf(vn->text, sizeof(vn->text), fmt, ap);
	va_end(ap);
}

static void file_with(struct vnode *vn, unsigned mode, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void file_with(struct vnode *vn, unsigned mode, const char *fmt, ...)
{
	va_list ap;

	node(vn, VN_REG, FS_SYSFS, mode);
	va_start(ap, fmt);
	vsnprintf(vn->text, sizeof(vn->text), fmt, ap);
	va_end(ap);
}

/* The entries of a function's directory, in the order readdir gives them. */
static const char *const fn_files[] = {
	"vendor", "device", "class", "subsystem_vendor", "subsystem_device", "revision",
};

/* /sys/devices/pciSSSS:BB/<bdf>/<c[0]>/<c[1]>...: the node, or -ENOENT/-ENOTDIR. */
static int fn_node(const struct vfn *f, char **c, int n, struct vnode *vn)
{
	unsigned vendor, device, class, k;

	ids_of(f, &vendor, &device, &class);
	if (n == 0) {
		node(vn, VN_DIR, FS_SYSFS, 0755);
		return 0;
	}
	if (n == 1) {
		if (!strcmp(c[0], "vendor") || !strcmp(c[0], "subsystem_vendor"))
			file_with(vn, 0444, "0x%04x\n", vendor);
		else if (!strcmp(c[0], "device") || !strcmp(c[0], "subsystem_device"))
			file_with(vn, 0444, "0x%04x\n", device);
		else if (!strcmp(c[0], "class"))
			file_with(vn, 0444, "0x%06x\n", class);
		else if (!strcmp(c[0], "revision"))
			file_with(vn, 0444, "0x%02x\n", 1);
		else if (!strcmp(c[0], "sriov_totalvfs") && f->nvfs)
			file_with(vn, 0444, "%u\n", f->nvfs);
		else if (!strcmp(c[0], "sriov_numvfs") && f->nvfs)
			file_with(vn, 0644, "%u\n", f->nvfs);
		else if (!strcmp(c[0], "vfio-dev"))
			node(vn, VN_DIR, FS_SYSFS, 0755);
		else if (!strcmp(c[0], "iommu_group"))
			link_to(vn, "../../../kernel/iommu_groups/%u", f->vfio);
		else if (!strcmp(c[0], "driver"))
			link_to(vn, "../../../bus/pci/drivers/vfio-pci");
		else if (!strcmp(c[0], "physfn") && f->pf[0])
			link_to(vn, "../%s", f->pf);
		else if (parse_index(c[0], "virtfn", &k) && vf_of(f, k))
			link_to(vn, "../%s", vf_of(f, k)->rid);
		else
			return -ENOENT;
		return 0;
	}
	if (strcmp(c[0], "vfio-dev") != 0)
		return fn_node(f, c, 1, vn) ? -ENOENT : -ENOTDIR;
	if (!parse_index(c[1], "vfio", &k) || k != f->vfio)
		return -ENOENT;
	if (n == 2) {
		node(vn, VN_DIR, FS_SYSFS, 0755);
		return 0;
	}
	if (n == 3 && !strcmp(c[2], "dev")) {
		file_with(vn, 0444, "%u:%u\n", IOPF_VFIO_MAJOR, f->vfio);
		return 0;
	}
	return n == 3 ? -ENOENT : (strcmp(c[2], "dev") ? -ENOENT : -ENOTDIR);
}

/* The node of exactly c[0..n), a path of a served root (served_root() said so).
 * *missed is set when a name could be a function the cache does not know yet. */
static int exact(char **c, int n, struct vnode *vn, bool *missed)
{
	const struct vfn *f;
	char parent[16];
	unsigned k;

	if (!strcmp(c[0], "dev")) {
		if (!cache.up) {
			*missed = true;
			return -ENOENT;
		}
		if (!strcmp(c[1], "iommu")) {
			if (n > 2)
				return -ENOTDIR;
			node(vn, VN_CHR, FS_DEVTMPFS, 0666);
			vn->rdev_major = 10;
			vn->rdev_minor = IOPF_IOMMU_MINOR;
			return 0;
		}
		/* /dev/vfio */
		if (n == 2 || (n == 3 && !strcmp(c[2], "devices"))) {
			node(vn, VN_DIR, FS_DEVTMPFS, 0755);
			return 0;
		}
		if (strcmp(c[2], "devices") != 0)
			return -ENOENT;
		if (!parse_index(c[3], "vfio", &k) || !fn_by_vfio(k)) {
			*missed = true;
			return -ENOENT;
		}
		if (n > 4)
			return -ENOTDIR;
		node(vn, VN_CHR, FS_DEVTMPFS, 0600);
		vn->rdev_major = IOPF_VFIO_MAJOR;
		vn->rdev_minor = k;
		return 0;
	}
	/* /sys */
	if (!strcmp(c[1], "bus")) {
		int root = !strcmp(c[3], "devices") ? 4 : 5;

		if (n == root) {
			node(vn, VN_DIR, FS_SYSFS, 0755);
			return 0;
		}
		f = fn_by_rid(c[root]);
		if (!f) {
			*missed = true;
			return -ENOENT;
		}
		parent_dir(f, parent, sizeof(parent));
		if (n > root + 1) /* only reached through the link */
			return -ENOENT;
		link_to(vn, "%s../devices/%s/%s", root == 4 ? "../../" : "../../../", parent, f->rid);
		return 0;
	}
	if (!strcmp(c[1], "kernel")) { /* /sys/kernel/iommu_groups/G */
		parse_index(c[3], "", &k);
		f = fn_by_vfio(k);
		if (n == 4 || (n == 5 && !strcmp(c[4], "devices"))) {
			node(vn, VN_DIR, FS_SYSFS, 0755);
			return 0;
		}
		if (strcmp(c[4], "devices") != 0 || strcmp(c[5], f->rid) != 0)
			return -ENOENT;
		if (n > 6)
			return -ENOENT;
		parent_dir(f, parent, sizeof(parent));
		link_to(vn, "../../../../devices/%s/%s", parent, f->rid);
		return 0;
	}
	/* /sys/devices/pciSSSS:BB/<bdf> */
	f = fn_by_rid(c[3]);
	return fn_node(f, c + 4, n - 4, vn);
}

/* How many leading components name a root this file serves; 0: not ours. */
static int served_root(char **c, int n, bool *missed)
{
	unsigned k;

	if (n >= 2 && !strcmp(c[0], "dev") && (!strcmp(c[1], "iommu") || !strcmp(c[1], "vfio")))
		return 2;
	if (n < 4 || strcmp(c[0], "sys") != 0)
		return 0;
	if (!strcmp(c[1], "bus") && !strcmp(c[2], "pci") && !strcmp(c[3], "devices"))
		return 4;
	if (n >= 5 && !strcmp(c[1], "bus") && !strcmp(c[2], "pci") && !strcmp(c[3], "drivers") &&
	    !strcmp(c[4], "vfio-pci"))
		return 5;
	if (!strcmp(c[1], "kernel") && !strcmp(c[2], "iommu_groups")) {
		if (parse_index(c[3], "", &k) && fn_by_vfio(k))
			return 4;
		*missed = true;
		return 0;
	}
	if (!strcmp(c[1], "devices") && strncmp(c[2], "pci", 3) == 0) {
		const struct vfn *f = fn_by_rid(c[3]);
		char parent[16];

		if (!f) {
			*missed = true;
			return 0;
		}
		parent_dir(f, parent, sizeof(parent));
		return strcmp(parent, c[2]) == 0 ? 4 : 0;
	}
	return 0;
}

/* Splits @path into @buf at '/', dropping "." (".." is kept: it is resolved after the
 * links before it, as the kernel's walk does). Returns the count. */
static int split(const char *path, char *buf, size_t cap, char **c)
{
	int n = 0;

	if (strlen(path) >= cap)
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (char *save = NULL, *tok = strtok_r(buf, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
		if (!strcmp(tok, "."))
			continue;
		if (n == MAX_COMPS)
			return -ENAMETOOLONG;
		c[n++] = tok;
	}
	return n;
}

static void join(char *out, size_t cap, char **c, int n)
{
	size_t len = 0;

	out[0] = '\0';
	for (int i = 0; i < n && len < cap; i++)
		len += (size_t)snprintf(out + len, cap - len, "/%s", c[i]);
	if (!n)
		snprintf(out, cap, "/");
}

/* The kernel's walk over the served trees: component by component, a link followed
 * where more follows it (or at the end with @follow), ".." taken after that. */
static int resolve(const char *path, bool follow, struct vnode *vn, bool *missed)
{
	char buf[PATH_MAX], cur[PATH_MAX];
	char *t[MAX_COMPS], *r[MAX_COMPS];
	int nt, rn, root = 0, links = 0;

	snprintf(cur, sizeof(cur), "%s", path);
again:
	nt = split(cur, buf, sizeof(buf), t);
	if (nt < 0)
		return nt;
	rn = 0;
	for (int j = 0; j < nt; j++) {
		if (!strcmp(t[j], "..")) {
			if (rn)
				rn--;
			continue;
		}
		r[rn++] = t[j];
		root = served_root(r, rn, missed);
		if (!root)
			continue;
		int rc = exact(r, rn, vn, missed);
		if (rc)
			return rc;
		bool last = j == nt - 1;
		if (vn->type == VN_LNK && (!last || follow)) {
			char next[PATH_MAX], dir[PATH_MAX];
			size_t len;

			if (++links > MAX_LINKS)
				return -ELOOP;
			join(dir, sizeof(dir), r, rn - 1);
			len = (size_t)snprintf(next, sizeof(next), "%s/%s", dir, vn->text);
			for (int k = j + 1; k < nt && len < sizeof(next); k++)
				len += (size_t)snprintf(next + len, sizeof(next) - len, "/%s", t[k]);
			snprintf(cur, sizeof(cur), "%s", next);
			goto again;
		}
		if (!last && vn->type != VN_DIR)
			return -ENOTDIR;
	}
	if (!rn || !served_root(r, rn, missed))
		return links ? -ENOENT : 1;
	int rc = exact(r, rn, vn, missed);
	if (rc)
		return rc;
	join(vn->path, sizeof(vn->path), r, rn);
	return 0;
}

int vfs_lookup(const char *path, bool follow, struct vnode *vn)
{
	bool missed = false;
	int rc;

	static const char *const roots[] = {
		"/dev/iommu", "/dev/vfio", "/sys/bus/pci/", "/sys/kernel/iommu_groups/", "/sys/devices/pci",
	};
	bool maybe = false;

	if (!path || (strncmp(path, "/dev/", 5) != 0 && strncmp(path, "/sys/", 5) != 0))
		return 1; /* the fast path: nothing of ours */
	for (size_t i = 0; i < sizeof(roots) / sizeof(roots[0]) && !maybe; i++)
		maybe = strncmp(path, roots[i], strlen(roots[i])) == 0;
	if (!maybe) /* /dev/null and the like: no daemon round trip (spellings with "//" or ".." are libc's) */
		return 1;
	if (path[strlen(path) - 1] == '/')
		follow = true; /* "link/" names what the link points to */
	pthread_mutex_lock(&cache.lock);
	if (!cache.fetched)
		fetch();
	rc = resolve(path, follow, vn, &missed);
	if (missed) { /* refresh on a miss */
		fetch();
		missed = false;
		rc = resolve(path, follow, vn, &missed);
	}
	pthread_mutex_unlock(&cache.lock);
	return rc;
}

void vfs_dev_node(struct vnode *vn, bool iommu, unsigned index)
{
	memset(vn, 0, sizeof(*vn));
	node(vn, VN_CHR, FS_DEVTMPFS, iommu ? 0666 : 0600);
	vn->rdev_major = iommu ? 10 : IOPF_VFIO_MAJOR;
	vn->rdev_minor = iommu ? IOPF_IOMMU_MINOR : index;
	if (iommu)
		snprintf(vn->path, sizeof(vn->path), "/dev/iommu");
	else
		snprintf(vn->path, sizeof(vn->path), "/dev/vfio/devices/vfio%u", index);
}

/* --- directories -------------------------------------------------------------------------------- */

static int add(struct vdirent **ents, size_t *n, size_t *cap, const char *name, unsigned char type)
{
	if (*n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 16;
		struct vdirent *e = realloc(*ents, ncap * sizeof(*e));
		if (!e)
			return -ENOMEM;
		*ents = e;
		*cap = ncap;
	}
	snprintf((*ents)[*n].name, sizeof((*ents)[*n].name), "%s", name);
	(*ents)[*n].type = type;
	(*n)++;
	return 0;
}

int vfs_list(const struct vnode *dir, struct vdirent **out, size_t *count)
{
	char buf[PATH_MAX], name[64];
	char *c[MAX_COMPS];
	struct vdirent *ents = NULL;
	size_t n = 0, cap = 0;
	const struct vfn *f;
	int k, rc = 0;

	if (dir->type != VN_DIR)
		return -ENOTDIR;
	k = split(dir->path, buf, sizeof(buf), c);
	if (k < 2)
		return -ENOENT;
	pthread_mutex_lock(&cache.lock);
	rc = add(&ents, &n, &cap, ".", DT_DIR);
	rc = rc ?: add(&ents, &n, &cap, "..", DT_DIR);
	if (!strcmp(c[0], "dev")) {
		if (k == 2) {
			rc = rc ?: add(&ents, &n, &cap, "devices", DT_DIR);
		} else {
			for (size_t i = 0; i < cache.n && !rc; i++) {
				snprintf(name, sizeof(name), "vfio%u", cache.fns[i].vfio);
				rc = add(&ents, &n, &cap, name, DT_CHR);
			}
		}
	} else if (!strcmp(c[1], "bus")) { /* .../devices, .../drivers/vfio-pci */
		for (size_t i = 0; i < cache.n && !rc; i++)
			rc = add(&ents, &n, &cap, cache.fns[i].rid, DT_LNK);
	} else if (!strcmp(c[1], "kernel")) {
		unsigned g = 0;
		parse_index(c[3], "", &g);
		f = fn_by_vfio(g);
		if (k == 4)
			rc = rc ?: add(&ents, &n, &cap, "devices", DT_DIR);
		else if (f)
			rc = rc ?: add(&ents, &n, &cap, f->rid, DT_LNK);
	} else if ((f = fn_by_rid(c[3])) != NULL) {
		if (k == 4) {
			for (size_t i = 0; i < sizeof(fn_files) / sizeof(fn_files[0]) && !rc; i++)
				rc = add(&ents, &n, &cap, fn_files[i], DT_REG);
			rc = rc ?: add(&ents, &n, &cap, "driver", DT_LNK);
			rc = rc ?: add(&ents, &n, &cap, "iommu_group", DT_LNK);
			rc = rc ?: add(&ents, &n, &cap, "vfio-dev", DT_DIR);
			if (f->pf[0])
				rc = rc ?: add(&ents, &n, &cap, "physfn", DT_LNK);
			for (unsigned v = 0; v < f->nvfs && !rc; v++) {
				snprintf(name, sizeof(name), "virtfn%u", v);
				rc = add(&ents, &n, &cap, name, DT_LNK);
			}
			if (f->nvfs) {
				rc = rc ?: add(&ents, &n, &cap, "sriov_numvfs", DT_REG);
				rc = rc ?: add(&ents, &n, &cap, "sriov_totalvfs", DT_REG);
			}
		} else if (k == 5) { /* vfio-dev */
			snprintf(name, sizeof(name), "vfio%u", f->vfio);
			rc = rc ?: add(&ents, &n, &cap, name, DT_DIR);
		} else {
			rc = rc ?: add(&ents, &n, &cap, "dev", DT_REG);
		}
	}
	pthread_mutex_unlock(&cache.lock);
	if (rc) {
		free(ents);
		return rc;
	}
	*out = ents;
	*count = n;
	return 0;
}

/* --- stat ------------------------------------------------------------------------------------------ */

uint64_t vfs_ino(const char *path)
{
	uint64_t h = 1469598103934665603ull;

	for (; *path; path++)
		h = (h ^ (uint8_t)*path) * 1099511628211ull;
	return (h & 0x7fffffff) | 1;
}

void vfs_stat(const struct vnode *vn, struct stat *st)
{
	static const mode_t kinds[] = {
		[VN_DIR] = S_IFDIR, [VN_CHR] = S_IFCHR, [VN_REG] = S_IFREG, [VN_LNK] = S_IFLNK,
	};

	memset(st, 0, sizeof(*st));
	st->st_dev = vn->fs == FS_DEVTMPFS ? makedev(0, 5) : makedev(0, 22);
	st->st_ino = vfs_ino(vn->path);
	st->st_mode = kinds[vn->type] | vn->mode;
	st->st_nlink = vn->type == VN_DIR ? 2 : 1;
	st->st_rdev = vn->type == VN_CHR ? makedev(vn->rdev_major, vn->rdev_minor) : 0;
	st->st_size = vn->type == VN_REG ? 4096 : 0; /* sysfs says a page for every attribute */
	st->st_blksize = 4096;
	st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = cache.born;
}
