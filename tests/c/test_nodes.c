// SPDX-License-Identifier: MIT
/* The device nodes and the sysfs view, as devtmpfs and sysfs show them (devtree.c). */
#include "ctest.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define SYSDEV "/sys/bus/pci/devices/"

static void read_text(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		ctest_fail(__FILE__, __LINE__, "open %s: %s", path, strerror(errno));
	n = read(fd, buf, cap - 1);
	ASSERT_TRUE(n > 0);
	buf[n] = '\0';
	ASSERT_OK(close(fd));
}

static bool dir_has(const char *path, const char *name, unsigned char type)
{
	DIR *dp = opendir(path);
	struct dirent *e;
	bool found = false;

	if (!dp)
		ctest_fail(__FILE__, __LINE__, "opendir %s: %s", path, strerror(errno));
	while ((e = readdir(dp)) != NULL)
		found |= strcmp(e->d_name, name) == 0 && e->d_type == type;
	ASSERT_OK(closedir(dp));
	return found;
}

TEST(nodes_dev_iommu_and_vfio_cdevs_stat_as_devtmpfs)
{
	struct stat st, lst;
	struct statx stx;

	ASSERT_OK(stat("/dev/iommu", &st));
	ASSERT_TRUE(S_ISCHR(st.st_mode));
	ASSERT_EQ(st.st_mode & 07777, 0666);
	ASSERT_EQ(major(st.st_rdev), 10);
	ASSERT_OK(stat("/dev/vfio/devices", &st));
	ASSERT_TRUE(S_ISDIR(st.st_mode));
	ASSERT_OK(lstat("/dev/vfio/devices/vfio2", &lst));
	ASSERT_TRUE(S_ISCHR(lst.st_mode));
	ASSERT_EQ(minor(lst.st_rdev), 2);
	ASSERT_OK(fstatat(AT_FDCWD, "/dev/vfio/devices/vfio3", &st, 0));
	ASSERT_EQ(minor(st.st_rdev), 3);
	ASSERT_EQ(major(st.st_rdev), major(lst.st_rdev));
	ASSERT_OK(statx(AT_FDCWD, "/dev/iommu", 0, STATX_BASIC_STATS, &stx));
	ASSERT_TRUE(S_ISCHR(stx.stx_mode));
	ASSERT_EQ(stx.stx_rdev_major, 10);
	ASSERT_ERR(ENOENT, stat("/dev/vfio/devices/vfio8", &st));
	ASSERT_ERR(ENOENT, stat("/dev/vfio/devices/vfio01", &st));
	ASSERT_ERR(ENOTDIR, stat("/dev/iommu/x", &st));
	ASSERT_OK(access("/dev/iommu", R_OK | W_OK));
	ASSERT_OK(faccessat(AT_FDCWD, "/dev/vfio/devices", X_OK, 0));
	ASSERT_ERR(ENOENT, access("/dev/vfio/devices/vfio9", F_OK));
	ASSERT_ERR(EINVAL, access("/dev/iommu", 0x10));
	/* the open fds are the nodes */
	int fd = t_iommufd(), dev = t_dev(DEV_VF);
	ASSERT_OK(fstat(fd, &st));
	ASSERT_TRUE(S_ISCHR(st.st_mode));
	ASSERT_EQ(major(st.st_rdev), 10);
	ASSERT_OK(fstat(dev, &st));
	ASSERT_EQ(st.st_rdev, lst.st_rdev);
	ASSERT_OK(close(dev));
	ASSERT_OK(close(fd));
}

TEST(nodes_dev_vfio_devices_lists_every_function)
{
	for (unsigned i = 0; i < DEV_COUNT; i++) {
		char name[16];
		snprintf(name, sizeof(name), "vfio%u", i);
		ASSERT_TRUE(dir_has("/dev/vfio/devices", name, DT_CHR));
	}
	ASSERT_TRUE(dir_has("/dev/vfio/devices", ".", DT_DIR));
	ASSERT_TRUE(!dir_has("/dev/vfio/devices", "vfio8", DT_CHR));
	ASSERT_TRUE(dir_has("/dev/vfio", "devices", DT_DIR));
	ASSERT_TRUE(opendir("/dev/iommu") == NULL && errno == ENOTDIR);
	ASSERT_TRUE(opendir("/dev/vfio/nothing") == NULL && errno == ENOENT);
}

TEST(nodes_sysfs_function_directory)
{
	char buf[256];
	struct stat st;

	ASSERT_TRUE(dir_has(SYSDEV, "0000:3a:00.0", DT_LNK));
	ASSERT_TRUE(dir_has(SYSDEV, "0000:5c:00.0", DT_LNK));
	ASSERT_OK(lstat(SYSDEV "0000:3a:00.0", &st));
	ASSERT_TRUE(S_ISLNK(st.st_mode));
	ASSERT_OK(stat(SYSDEV "0000:3a:00.0", &st));
	ASSERT_TRUE(S_ISDIR(st.st_mode));
	ASSERT_ERR(ENOENT, stat(SYSDEV "0000:99:00.0", &st));
	read_text(SYSDEV "0000:3a:00.0/vendor", buf, sizeof(buf));
	ASSERT_TRUE(strcmp(buf, "0x8086\n") == 0);
	read_text(SYSDEV "0000:3a:00.0/class", buf, sizeof(buf));
	ASSERT_EQ(strlen(buf), 9); /* "0x%06x\n" */
	read_text(SYSDEV "0000:3a:00.0/device", buf, sizeof(buf));
	ASSERT_EQ(strlen(buf), 7);
	ASSERT_OK(stat(SYSDEV "0000:3a:00.0/vendor", &st));
	ASSERT_TRUE(S_ISREG(st.st_mode));
	ASSERT_EQ(st.st_mode & 0777, 0444);
	/* read-only attributes: no write open, and the fd is read-only */
	ASSERT_ERR(EACCES, open(SYSDEV "0000:3a:00.0/vendor", O_WRONLY));
	ASSERT_ERR(ENOTDIR, open(SYSDEV "0000:3a:00.0/vendor/x", O_RDONLY));
	int fd = open(SYSDEV "0000:3a:00.0/vendor", O_RDONLY);
	ASSERT_TRUE(fd >= 0);
	ASSERT_ERR(EBADF, write(fd, "1", 1));
	ASSERT_OK(fstat(fd, &st));
	ASSERT_TRUE(S_ISREG(st.st_mode));
	ASSERT_OK(close(fd));
	FILE *fp = fopen(SYSDEV "0000:3b:00.1/device", "r");
	ASSERT_TRUE(fp != NULL);
	unsigned long id = 0;
	ASSERT_EQ(fscanf(fp, "%lx", &id), 1);
	ASSERT_NE(id, 0);
	ASSERT_OK(fclose(fp));
	/* the driver and the group */
	ssize_t n = readlink(SYSDEV "0000:3a:00.0/driver", buf, sizeof(buf));
	ASSERT_TRUE(n > 0);
	buf[n] = '\0';
	ASSERT_TRUE(strcmp(strrchr(buf, '/'), "/vfio-pci") == 0);
	n = readlink(SYSDEV "0000:3b:00.1/iommu_group", buf, sizeof(buf));
	ASSERT_TRUE(n > 0);
	buf[n] = '\0';
	ASSERT_TRUE(strcmp(buf, "../../../kernel/iommu_groups/2") == 0);
	ASSERT_OK(stat(SYSDEV "0000:3b:00.1/iommu_group", &st));
	ASSERT_TRUE(S_ISDIR(st.st_mode));
	ASSERT_ERR(EINVAL, readlink(SYSDEV "0000:3a:00.0/vendor", buf, sizeof(buf)));
	n = readlinkat(AT_FDCWD, SYSDEV "0000:3a:00.0/driver", buf, 3); /* truncated, no NUL */
	ASSERT_EQ(n, 3);
	/* vfio-dev/vfioN */
	ASSERT_TRUE(dir_has(SYSDEV "0000:3b:00.1/vfio-dev", "vfio2", DT_DIR));
	read_text(SYSDEV "0000:3b:00.1/vfio-dev/vfio2/dev", buf, sizeof(buf));
	ASSERT_TRUE(strchr(buf, ':') != NULL);
	ASSERT_OK(access(SYSDEV "0000:3b:00.1/vfio-dev/vfio2", R_OK | X_OK));
	ASSERT_ERR(EACCES, access(SYSDEV "0000:3a:00.0/vendor", X_OK));
}

TEST(nodes_sysfs_pf_and_vf_links)
{
	char buf[256], want[64];
	ssize_t n;
	struct stat st;

	/* the PF's VFs are vfio2 and vfio3 (0000:3b:00.1, .2) */
	for (int k = 0; k < 2; k++) {
		snprintf(want, sizeof(want), "../0000:3b:00.%d", k + 1);
		snprintf(buf, sizeof(buf), SYSDEV "0000:3b:00.0/virtfn%d", k);
		char target[256];
		n = readlink(buf, target, sizeof(target));
		ASSERT_TRUE(n > 0);
		target[n] = '\0';
		ASSERT_TRUE(strcmp(target, want) == 0);
	}
	ASSERT_ERR(ENOENT, lstat(SYSDEV "0000:3b:00.0/virtfn2", &st));
	ASSERT_ERR(ENOENT, lstat(SYSDEV "0000:3b:00.0/physfn", &st));
	n = readlink(SYSDEV "0000:3b:00.2/physfn", buf, sizeof(buf));
	ASSERT_TRUE(n > 0);
	buf[n] = '\0';
	ASSERT_TRUE(strcmp(buf, "../0000:3b:00.0") == 0);
	ASSERT_ERR(ENOENT, lstat(SYSDEV "0000:3b:00.2/virtfn0", &st));
	/* through the link: the PF's own attributes */
	read_text(SYSDEV "0000:3b:00.2/physfn/sriov_totalvfs", buf, sizeof(buf));
	ASSERT_TRUE(strcmp(buf, "2\n") == 0);
	/* a directory fd serves relative lookups, as sysfs walkers use it */
	DIR *dp = opendir(SYSDEV "0000:3b:00.0");
	ASSERT_TRUE(dp != NULL);
	ASSERT_OK(fstatat(dirfd(dp), "virtfn0", &st, AT_SYMLINK_NOFOLLOW));
	ASSERT_TRUE(S_ISLNK(st.st_mode));
	int fd = openat(dirfd(dp), "vendor", O_RDONLY);
	ASSERT_TRUE(fd >= 0);
	ASSERT_OK(close(fd));
	ASSERT_OK(fstat(dirfd(dp), &st));
	ASSERT_TRUE(S_ISDIR(st.st_mode));
	ASSERT_OK(closedir(dp));
}
