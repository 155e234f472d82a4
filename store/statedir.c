/*
 * statedir.c — the state directory and the store's files in it: the
 * directory is created 0700 or refused (CKR_GUARDIAN_STATE_UNSAFE) when it is
 * a link, another user's or writable by others; every file in it is opened
 * relative to its descriptor, without following links, and made 0600.
 * Engine-neutral: an engine that keeps its data elsewhere (a server) still
 * keeps the issue journals and anchor.lock here.
 */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the state directory and its files ------------------------------------------- */

/* The state directory: created 0700 if missing (its parent must exist), else
 * refused unless it is a real directory of this effective uid that no one
 * else may write (CKR_GUARDIAN_STATE_UNSAFE, with what to do).  *out: a
 * descriptor of it, for openat() and friends. */
CK_RV state_dir_open(const char *dir, int *out)
{
    struct stat sb;
    bool created = false;
    int fd;

    *out = -1;
    if (lstat(dir, &sb) != 0) {
        if (errno != ENOENT) {
            guardian_error(STORE_LOG, "cannot use the state directory %s: %s", dir, strerror(errno));
            return CKR_GUARDIAN_STORE_FAILED;
        }
        if (mkdir(dir, STORE_DIR_MODE) == 0)
            created = true;
        else if (errno != EEXIST) {
            guardian_error(STORE_LOG, "cannot create the state directory %s: %s (its parent directory must exist)",
                           dir, strerror(errno));
            return CKR_GUARDIAN_STORE_FAILED;
        }
        if (lstat(dir, &sb) != 0) {
            guardian_error(STORE_LOG, "cannot use the state directory %s: %s", dir, strerror(errno));
            return CKR_GUARDIAN_STORE_FAILED;
        }
    }
    if (S_ISLNK(sb.st_mode)) {
        guardian_error(STORE_LOG, "the state directory %s is a symbolic link: refused; set state_dir (or "
                                  "GUARDIAN_STATE_DIR) to the directory itself",
                       dir);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (fd < 0 && e != ELOOP && e != ENOTDIR) {
            guardian_error(STORE_LOG, "cannot open the state directory %s: %s", dir, strerror(e));
            return CKR_GUARDIAN_STORE_FAILED;
        }
        guardian_error(STORE_LOG, "the state directory %s is not a directory (or was just replaced by a link): "
                                  "refused; set state_dir to a directory",
                       dir);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    /* mkdir() applied the umask: make the mode what the store asked for. */
    if (created && (sb.st_mode & 07777) != STORE_DIR_MODE && fchmod(fd, STORE_DIR_MODE) == 0)
        sb.st_mode = (sb.st_mode & ~(mode_t)07777) | STORE_DIR_MODE;
    if (sb.st_uid != geteuid()) {
        guardian_error(STORE_LOG, "the state directory %s belongs to uid %lu, not to this process's uid %lu: "
                                  "refused; chown %lu %s (or run as its owner)",
                       dir, (unsigned long)sb.st_uid, (unsigned long)geteuid(), (unsigned long)geteuid(), dir);
        close(fd);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if ((sb.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        guardian_error(STORE_LOG, "the state directory %s is writable by %s (mode %04o): refused; chmod 700 %s",
                       dir, (sb.st_mode & S_IWOTH) != 0 ? "others" : "its group", (unsigned)(sb.st_mode & 07777),
                       dir);
        close(fd);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if (created)
        guardian_info(STORE_LOG, "created the state directory %s (mode 0700)", dir);
    *out = fd;
    return CKR_OK;
}

/* A file of the store in the state directory (guardian.db, -wal, -shm, an
 * issue journal) opened by `fd`: a regular file of this effective uid, or
 * CKR_GUARDIAN_STATE_UNSAFE; set to 0600 whatever the umask made it. */
static CK_RV state_file_vet(const struct guardian_store *st, int fd, const char *name)
{
    struct stat sb;

    if (fstat(fd, &sb) != 0) {
        guardian_error(STORE_LOG, "cannot stat %s/%s: %s", st->dir, name, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    if (!S_ISREG(sb.st_mode)) {
        guardian_error(STORE_LOG, "%s/%s is not a regular file: refused; remove it", st->dir, name);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if (sb.st_uid != geteuid()) {
        guardian_error(STORE_LOG, "%s/%s belongs to uid %lu, not to this process's uid %lu: refused; chown %lu %s/%s",
                       st->dir, name, (unsigned long)sb.st_uid, (unsigned long)geteuid(), (unsigned long)geteuid(),
                       st->dir, name);
        return CKR_GUARDIAN_STATE_UNSAFE;
    }
    if ((sb.st_mode & 07777) != STORE_FILE_MODE && fchmod(fd, STORE_FILE_MODE) != 0) {
        guardian_error(STORE_LOG, "cannot chmod 600 %s/%s: %s", st->dir, name, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    return CKR_OK;
}

/* Opens `name` in the state directory without following a symbolic link
 * (CKR_GUARDIAN_STATE_UNSAFE if it is one) and vets it; *fd -1 and CKR_OK if
 * it does not exist and `flags` has no O_CREAT. */
CK_RV state_file_open(const struct guardian_store *st, const char *name, int flags, int *fd)
{
    CK_RV rv;

    *fd = openat(st->dir_fd, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, STORE_FILE_MODE);
    if (*fd < 0) {
        if (errno == ENOENT && (flags & O_CREAT) == 0)
            return CKR_OK;
        if (errno == ELOOP) {
            guardian_error(STORE_LOG, "%s/%s is a symbolic link: refused; remove it (the store makes its own files) "
                                      "and find out who made it",
                           st->dir, name);
            return CKR_GUARDIAN_STATE_UNSAFE;
        }
        if (errno == EISDIR) {
            guardian_error(STORE_LOG, "%s/%s is not a regular file: refused; remove it", st->dir, name);
            return CKR_GUARDIAN_STATE_UNSAFE;
        }
        guardian_error(STORE_LOG, "cannot open %s/%s: %s", st->dir, name, strerror(errno));
        return CKR_GUARDIAN_STORE_FAILED;
    }
    rv = state_file_vet(st, *fd, name);
    if (rv != CKR_OK) {
        close(*fd);
        *fd = -1;
    }
    return rv;
}

/* guardian.db (created empty here, 0600, so that SQLite finds it and gives
 * its -wal and -shm the same mode: it creates them with the database's mode,
 * whatever the umask), then the -wal and -shm that exist. */
CK_RV state_files_prepare(const struct guardian_store *st)
{
    static const char *const names[] = {STORE_FILE_NAME, STORE_FILE_NAME "-wal", STORE_FILE_NAME "-shm"};
    CK_RV rv = CKR_OK;

    for (size_t i = 0; rv == CKR_OK && i < sizeof(names) / sizeof(names[0]); i++) {
        int fd = -1;
        rv = state_file_open(st, names[i], O_RDWR | (i == 0 ? O_CREAT : 0), &fd);
        if (fd >= 0)
            close(fd);
    }
    return rv;
}
