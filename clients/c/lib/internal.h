/* SPDX-License-Identifier: MIT */
/*
 * libiopf-preload internals: the pieces of the library and what each offers the
 * others. One job per file:
 *   interpose.c  the libc symbols it replaces, and the real ones behind them
 *   fdtable.c    which fds are ours and what each one is
 *   conn.c       one daemon connection per iommufd context: framing, replies, events
 *   uaccess.c    copy_from_user/copy_to_user as the kernel does them (EFAULT, E2BIG)
 *   iommufd.c    the /dev/iommu ioctls: dispatch, objects, DESTROY, IOAS_ALLOC,
 *                FAULT_QUEUE_ALLOC, GET_HW_INFO
 *   hw_pagetable.c  HWPT_ALLOC, HWPT_INVALIDATE
 *   ioas.c       the IOAS areas the kernel keeps (IOMMU_IOAS_MAP/UNMAP rules)
 *   vfio.c       the VFIO device cdev ioctls
 *   faultfd.c    the fault fd: read(), write(), and its delivery
 *   extras.c     iopf.h: iopf_dma, iopf_s1_map, iopf_s1_unmap
 *   ioas_ext.c   IOAS_IOVA_RANGES, IOAS_ALLOW_IOVAS, IOAS_COPY, IOAS_MAP_FILE, OPTION
 *   devtree.c    the device nodes and the sysfs view: paths, entries, stat data
 *   fsops.c      the libc calls on paths served by devtree.c (stat, access, readlink,
 *                opendir/readdir, fopen; open() itself is in interpose.c)
 */
#ifndef IOPF_INTERNAL_H
#define IOPF_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "msgpack.h"

#define IOPF_PAGE_SIZE 4096u
#define IOPF_WIRE_VERSION 2
#define IOPF_DEFAULT_SOCKET "/run/iopfd/iopfd.sock"
#define IOPF_MAX_FRAME (1u << 20)

/* --- interpose.c: the real libc functions --------------------------------------- */

struct iopf_real {
	int (*open)(const char *, int, ...);
	int (*openat)(int, const char *, int, ...);
	int (*close)(int);
	ssize_t (*read)(int, void *, size_t);
	ssize_t (*write)(int, const void *, size_t);
	int (*ioctl)(int, unsigned long, ...);
};
extern struct iopf_real iopf_real;
void iopf_real_init(void);
/* Prints to stderr when $IOPF_DEBUG is set. */
void iopf_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --- devtree.c: the device nodes and the sysfs view -------------------------------- */

#define IOPF_IOMMU_MINOR 123 /* /dev/iommu: misc (10), a dynamic minor on Linux */
#define IOPF_VFIO_MAJOR 237  /* /dev/vfio/devices/vfioN: a dynamic major on Linux */

enum vnode_type { VN_DIR = 1, VN_CHR, VN_REG, VN_LNK };
enum vnode_fs { FS_DEVTMPFS = 1, FS_SYSFS };

struct vnode {
	enum vnode_type type;
	enum vnode_fs fs;
	unsigned mode; /* permission bits */
	unsigned rdev_major, rdev_minor;
	char path[256]; /* canonical */
	char text[256]; /* VN_REG: the content; VN_LNK: the target */
};

struct vdirent {
	char name[64];
	unsigned char type; /* DT_* */
};

/* 1: not a path this library serves (libc's); 0: *vn filled; -errno (ENOENT, ENOTDIR,
 * ELOOP) as the kernel's path walk would say. Absolute paths only. */
int vfs_lookup(const char *path, bool follow, struct vnode *vn);
/* The node behind an open /dev/iommu (@iommu) or vfio@index fd. */
void vfs_dev_node(struct vnode *vn, bool iommu, unsigned index);
/* A directory's entries ("." and ".." first); free() *out. */
int vfs_list(const struct vnode *dir, struct vdirent **out, size_t *n);
struct stat;
void vfs_stat(const struct vnode *vn, struct stat *st);
uint64_t vfs_ino(const char *path);
/* fsops.c: open() of a served path that is not /dev/iommu or a vfioN node: an fd, or
 * -1 with errno. */
int vfs_open(const struct vnode *vn, int flags);
/* open() of @path (absolute, or under a directory fd of ours): false if not ours, else
 * true with the fd or -1/errno in *fd. */
bool vfs_try_open(int dirfd, const char *path, int flags, int *fd);
/* interpose.c: an open of /dev/iommu (@iommu) or of vfio@index, and the whole rule of
 * what open() serves (false: libc's). */
int iopf_open_dev(bool iommu, unsigned index, int flags);
bool iopf_open_served(int dirfd, const char *path, int flags, int *fd);

/* --- conn.c: a daemon connection ------------------------------------------------- */

struct iopf_conn;
struct iopf_ctx;

struct iopf_reply {
	uint8_t *frame;            /* owns the bytes the tree points into */
	struct mp_doc doc;
	const struct mp_obj *result; /* the "result" map of an ok reply */
	int fd;                    /* an fd passed with the reply (SCM_RIGHTS), or -1 */
};

/* A request under construction: a frame with room for the length, a map of
 * 2 + nargs entries, "op": op. conn_call() appends "id" and sends it. */
void req_start(struct mp_buf *b, const char *op, uint32_t nargs);

/* Connects to $IOPFD_SOCKET (else IOPF_DEFAULT_SOCKET) and says hello. -errno. */
int conn_open(struct iopf_conn **out);
void conn_get(struct iopf_conn *c);
void conn_put(struct iopf_conn *c); /* the last put closes the connection */
/* Sends @req (consumed) and waits for its reply: 0 with @rep filled (release it with
 * reply_free), -errno of the daemon's error code, or -EIO when the connection is
 * gone. @rep may be NULL when the result is not needed. */
int conn_call(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep);
/* conn_call() of an op whose reply carries an fd (`fault_fd`): it lands in rep->fd. */
int conn_call_fd(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep, bool want_fd);
/* conn_call() of an op the daemon may not have yet (docs/uapi.md, "pending"): -ENOTTY
 * when the daemon answers EINVAL "unknown op", as a kernel without the ioctl would. */
int conn_call_pending(struct iopf_conn *c, struct mp_buf *req, struct iopf_reply *rep);
void reply_free(struct iopf_reply *rep);
/* The iommufd context this connection serves (objects, IOAS areas, fault sinks). */
struct iopf_ctx *conn_ctx(struct iopf_conn *c);
/* Maps an errno name of the protocol to its value (EIO for names it does not know). */
int errno_from_name(const struct mp_obj *name);
/* Result helpers: a uint result key, or 0 when absent. */
uint64_t reply_u64(const struct iopf_reply *rep, const char *key, bool *present);

/* --- fdtable.c: our fds --------------------------------------------------------- */

/* IOPF_NODE: an open sysfs file or directory of devtree.c (a memfd or /dev/null
 * behind it; read/write/ioctl go to libc, fstat reports the node). */
enum iopf_file_kind { IOPF_IOMMUFD = 1, IOPF_VFIO = 2, IOPF_FAULT = 3, IOPF_NODE = 4 };

struct iopf_file {
	enum iopf_file_kind kind;
	int fd;
	int refs;                   /* fdtable ref + one per caller holding it */
	pthread_mutex_t lock;       /* serializes this file's ioctls (dev_set->lock) */
	struct iopf_conn *conn;     /* IOMMUFD: its context; VFIO: once bound; FAULT: owner */
	union {
		struct {
			unsigned index;      /* N of /dev/vfio/devices/vfioN */
			char rid[32];
			unsigned pasid_bits;
			bool pri;
			bool is_vf;
			bool has_vfs;
			bool bound;
			uint32_t dev_id;
		} vfio;
		struct {
			uint32_t fault_id;
			struct fault_sink *sink; /* event delivery (no daemon fault fd), or NULL */
		} fault;
		struct {
			char path[256];      /* the node's canonical path */
			uint64_t dev, ino;   /* what is behind the fd: a stale entry is dropped */
		} node;
	} u;
};

/* Registers @f under f->fd (the table holds one reference). -EMFILE past the table. */
int fdtab_install(struct iopf_file *f);
/* The file behind @fd with a reference the caller drops with file_put, or NULL. */
struct iopf_file *fdtab_get(int fd);
/* Unregisters @fd and returns the table's reference to the caller, or NULL. */
struct iopf_file *fdtab_remove(int fd);
struct iopf_file *file_new(enum iopf_file_kind kind, int fd);
/* The file's connection with a reference of the caller's (conn_put it), or NULL. */
struct iopf_conn *file_conn(struct iopf_file *f);
void file_put(struct iopf_file *f); /* frees on the last reference */
/* Is a FAULT file of @conn with @fault_id open? (IOMMU_DESTROY refuses it: EBUSY.) */
bool fdtab_fault_open(struct iopf_conn *c, uint32_t fault_id);

/* --- uaccess.c -------------------------------------------------------------------- */

int copy_from_user(void *dst, const void *user, size_t n); /* 0 or -EFAULT */
int copy_to_user(void *user, const void *src, size_t n);   /* 0 or -EFAULT */
/* copy_struct_from_user(): @usize bytes in, zero-filled up to @ksize; -E2BIG if the
 * user's bytes beyond @ksize are not all zero. */
int copy_struct_from_user(void *dst, size_t ksize, const void *user, size_t usize);
/* get_user() of the leading u32 (size, argsz). */
int get_user_u32(uint32_t *dst, const void *user);

/* --- the ioctl handlers: each returns 0 or -errno ---------------------------------- */

/* One /dev/iommu ioctl in flight: the kernel's struct iommufd_ucmd. */
struct ucmd {
	struct iopf_conn *conn;
	void *ubuffer;
	uint32_t user_size;
	void *cmd;
};
int ucmd_respond(struct ucmd *u, size_t cmd_len);
int destroy_obj(struct iopf_conn *c, uint32_t id);
int iommufd_hwpt_alloc(struct ucmd *u);      /* hw_pagetable.c */
int iommufd_hwpt_invalidate(struct ucmd *u); /* hw_pagetable.c */

int iommufd_open(struct iopf_file *f);
void iommufd_release(struct iopf_file *f);
long iommufd_ioctl(struct iopf_file *f, unsigned long cmd, void *arg);
int vfio_open(struct iopf_file *f, unsigned index);
void vfio_release(struct iopf_file *f);
long vfio_ioctl(struct iopf_file *f, unsigned long cmd, void *arg);
ssize_t fault_read(struct iopf_file *f, void *buf, size_t count);
ssize_t fault_write(struct iopf_file *f, const void *buf, size_t count);
void fault_release(struct iopf_file *f);

/* --- the iommufd context (iommufd.c, ioas.c, faultfd.c) ---------------------------- */

enum iopf_obj_kind { OBJ_IOAS = 1, OBJ_HWPT_PAGING, OBJ_HWPT_NESTED, OBJ_FAULT, OBJ_DEVICE };

struct ioas_area {
	uint64_t iova;
	uint64_t length;
};

struct iopf_obj {
	uint32_t id;
	enum iopf_obj_kind kind;
	unsigned pasid_bits;     /* OBJ_DEVICE: the function's PASID width */
	struct ioas_area *areas; /* OBJ_IOAS: sorted by iova, disjoint */
	size_t nareas;
	size_t cap;
	struct iopf_obj *next;
};

struct fault_sink;

struct iopf_ctx {
	pthread_mutex_t lock;        /* objects and their areas */
	struct iopf_obj *objects;
	pthread_mutex_t sink_lock;   /* sinks: touched by the connection's reader */
	struct fault_sink *sinks;
	int fault_fd_op;             /* does the daemon have `fault_fd`? -1 unknown, 0, 1 */
};

void ctx_init(struct iopf_ctx *ctx);
void ctx_destroy(struct iopf_ctx *ctx);
/* Object table (ctx->lock held by the caller). */
struct iopf_obj *ctx_find(struct iopf_ctx *ctx, uint32_t id);
struct iopf_obj *ctx_add(struct iopf_ctx *ctx, uint32_t id, enum iopf_obj_kind kind);
void ctx_del(struct iopf_ctx *ctx, uint32_t id);

/* ioas.c: IOMMU_IOAS_MAP and IOMMU_IOAS_UNMAP of the kernel's io_pagetable. */
int ioas_map(struct iopf_conn *c, void *arg);
int ioas_unmap(struct iopf_conn *c, void *arg);
/* The area bookkeeping (ctx->lock held), shared with ioas_ext.c. */
int ioas_area_insert(struct iopf_obj *ioas, uint64_t iova, uint64_t length);
bool ioas_area_overlaps(const struct iopf_obj *ioas, uint64_t iova, uint64_t last);
int ioas_check_iova(const struct iopf_obj *ioas, uint64_t iova, uint64_t length);
int ioas_wire_unmap(struct iopf_conn *c, uint32_t ioas_id, uint64_t iova, uint64_t length);

/* ioas_ext.c: IOMMU_IOAS_IOVA_RANGES, _ALLOW_IOVAS, _COPY, _MAP_FILE and IOMMU_OPTION,
 * over the daemon ops docs/uapi.md lists as pending (ENOTTY until the daemon has them). */
int iommufd_ioas_iova_ranges(struct ucmd *u);
int iommufd_ioas_allow_iovas(struct ucmd *u);
int iommufd_ioas_copy(struct ucmd *u);
int iommufd_ioas_map_file(struct ucmd *u);
int iommufd_option(struct ucmd *u);

/* faultfd.c: a new fault queue's fd (IOMMU_FAULT_QUEUE_ALLOC), O_CLOEXEC, in the fd
 * table. Returns the fd or -errno. */
int fault_fd_create(struct iopf_conn *c, uint32_t fault_id);
/* A decoded event of @c (the reader thread calls it). */
void fault_on_event(struct iopf_conn *c, const struct mp_obj *msg);
void fault_sinks_drop(struct iopf_ctx *ctx);

#endif /* IOPF_INTERNAL_H */
