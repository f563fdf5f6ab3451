/*
 * An LD_PRELOAD library that records, for the torture tools, what a power cut
 * would have to undo, and injects I/O errors on request.
 *
 * Environment (all set by tools/torture/_shim.py; without TORTURE_SHIM_DIR the
 * library only passes calls through):
 *   TORTURE_SHIM_DIR    the directory whose files are tracked (resolved to a real
 *                       path once, at start-up)
 *   TORTURE_SHIM_LOG    the undo log, opened once with O_APPEND
 *   TORTURE_SHIM_GRAVE  a directory on the same filesystem where unlinked or
 *                       replaced files are kept (hard links) so they can come back
 *   TORTURE_SHIM_CTL    the control file, mapped shared: faults to inject, counters
 *
 * Rules and theory:
 * - A file is tracked if the path it was opened with, resolved against the cwd or
 *   the dirfd (lexically, then realpath of its parent), lies under the directory.
 *   SQLite's "-shm" files are not tracked: they are written through mmap, and the
 *   rollback deletes them as a reboot does.
 * - Every record is written with ONE write() to the log, before the change it
 *   describes, so a SIGKILL leaves whole records plus at most a torn last one
 *   (which the reader drops; its change never happened). A record that turns out
 *   not to describe what happened (a short or failed write, a failed create) is
 *   followed by an 'R' result record.
 * - One mutex covers "log the record, then make the change", so the order of the
 *   records is the order of the changes. fsync runs outside the mutex: its mark
 *   carries 'upto', the first sequence number it may NOT cover (the number the
 *   next record would have had when the fsync started), so a write racing an
 *   fsync is never counted as synced.
 * - One process is tracked: the one started under the library. It removes
 *   TORTURE_SHIM_DIR from its environment at start-up, and a forked child stops
 *   tracking, so no second process numbers records into the same log.
 * - Faults are read from shared memory (a plain load per call, no syscall). An
 *   injected fault does not perform the write or the sync. An injected or real
 *   failed sync is logged as a FAIL mark: the rollback treats the file's unsynced
 *   writes before it as lost for good (Linux drops the dirty pages).
 *
 * Record layout (native endianness; the reader is tools/torture/_shim.py): an
 * 88-byte header {u32 magic, u32 type, u64 total, u64 seq, u64 dev, u64 ino,
 * i64 a..f} and a payload. Types:
 *   'O' open      dev/ino=file, a=flags, b=is_dir; payload path
 *   'C' create    dev/ino=parent dir, a=is_dir (mkdir); payload path  (intent)
 *   'W' write     dev/ino, a=offset, b=old size, c=old len, d=new len;
 *                 payload old bytes then new bytes
 *   'T' truncate  dev/ino, a=old size, b=new size, c=cut len; payload cut tail
 *   'R' result    a=seq of the record it settles, b=result (>=0, or -errno),
 *                 dev/ino=the inode created, if any
 *   'S' sync      dev/ino, a=upto, b=is_dir
 *   'F' failed    dev/ino, a=upto, b=is_dir, c=errno, d=1 if injected
 *   'U' unlink    dev/ino=removed, a/b=parent dev/ino, c=is_dir;
 *                 payload path NUL grave NUL  (grave empty if not kept)
 *   'M' rename    dev/ino=moved, a/b=old parent, c/d=new parent, e/f=replaced;
 *                 payload old NUL new NUL grave NUL
 *   'E' injected write error  dev/ino, a=errno, b=length refused
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define REC_MAGIC 0x31444E55u /* "UND1" */
#define CTL_MAGIC 0x4C544354u /* "TCTL" */
#define MAX_FDS 65536

/* The control file: must match _shim.py. */
struct ctl {
    uint32_t magic;
    uint32_t version;
    volatile uint32_t write_errno; /* 0: off; else the errno writes fail with */
    volatile uint32_t sync_errno;  /* 0: off; else the errno syncs fail with */
    char names[240];               /* basenames that faults hit, NUL-separated */
    volatile uint64_t counters[16];
};

enum {
    C_OPENS,       /* tracked opens */
    C_WRITES,      /* tracked writes logged */
    C_BYTES,       /* bytes of those writes */
    C_SYNCS,       /* successful file syncs */
    C_DIRSYNCS,    /* successful directory syncs */
    C_FAILS,       /* failed syncs (real or injected) */
    C_NAMED_WRITES, /* writes to files whose name is in ctl->names */
    C_NAMED_SYNCS,  /* syncs of such files */
    C_FAULT_WRITES, /* injected write errors */
    C_FAULT_SYNCS,  /* injected sync errors */
    C_TRUNCATES,
    C_CREATES,
    C_UNLINKS,
    C_RENAMES,
    C_LOST_FDS, /* tracked files whose fd was beyond the table (not tracked) */
    C_LOG_BYTES,
};

struct rec {
    uint32_t magic;
    uint32_t type;
    uint64_t total;
    uint64_t seq;
    uint64_t dev;
    uint64_t ino;
    int64_t a, b, c, d, e, f;
};

struct fdinfo {
    unsigned char kind; /* 0 untracked, 1 file, 2 directory */
    int rfd;            /* a read-only twin for an O_WRONLY descriptor, or -1 */
    dev_t dev;
    ino_t ino;
    char base[64];      /* basename, for fault matching */
};

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off_t, int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_truncate)(const char *, off_t);
static int (*real_truncate64)(const char *, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_rmdir)(const char *);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_mkdirat)(int, const char *, mode_t);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_active;
static char g_root[PATH_MAX];
static size_t g_rootlen;
static char g_grave[PATH_MAX];
static int g_logfd = -1;
static uint64_t g_seq = 1;
static uint64_t g_grave_n;
static struct ctl *g_ctl;
static struct fdinfo *g_fds;

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

static void die(const char *what)
{
    /* The emulation is worthless once the log is incomplete: stop loudly. */
    char msg[256];
    int n = snprintf(msg, sizeof msg, "torture shim: %s: %s\n", what, strerror(errno));
    if (n > 0 && real_write)
        real_write(2, msg, (size_t)n);
    abort();
}

static void before_fork(void)
{
    pthread_mutex_lock(&g_lock);
}

static void after_fork_parent(void)
{
    pthread_mutex_unlock(&g_lock);
}

static void after_fork_child(void)
{
    /* A forked child shares the log but not our sequence numbers: it is not
     * tracked (its writes are not undone by a power cut). */
    g_active = 0;
    pthread_mutex_unlock(&g_lock);
}

static void init(void)
{
    RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64);
    RESOLVE(close); RESOLVE(write); RESOLVE(pwrite); RESOLVE(pwrite64);
    RESOLVE(writev); RESOLVE(pwritev); RESOLVE(pwritev64); RESOLVE(pwritev2);
    RESOLVE(pwritev64v2); RESOLVE(ftruncate); RESOLVE(ftruncate64);
    RESOLVE(truncate); RESOLVE(truncate64); RESOLVE(fsync); RESOLVE(fdatasync);
    RESOLVE(unlink); RESOLVE(unlinkat); RESOLVE(rmdir); RESOLVE(rename);
    RESOLVE(renameat); RESOLVE(renameat2); RESOLVE(mkdir); RESOLVE(mkdirat);
    RESOLVE(dup); RESOLVE(dup2); RESOLVE(dup3); RESOLVE(fcntl); RESOLVE(fcntl64);

    const char *dir = getenv("TORTURE_SHIM_DIR");
    const char *log = getenv("TORTURE_SHIM_LOG");
    const char *grave = getenv("TORTURE_SHIM_GRAVE");
    const char *ctl = getenv("TORTURE_SHIM_CTL");
    if (!dir || !*dir || !log || !*log)
        return;
    if (!realpath(dir, g_root))
        die("cannot resolve TORTURE_SHIM_DIR");
    g_rootlen = strlen(g_root);
    if (grave && *grave && !realpath(grave, g_grave))
        die("cannot resolve TORTURE_SHIM_GRAVE");
    g_logfd = real_open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (g_logfd < 0)
        die("cannot open TORTURE_SHIM_LOG");
    if (ctl && *ctl) {
        int fd = real_open(ctl, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            die("cannot open TORTURE_SHIM_CTL");
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        real_close(fd);
        if (p == MAP_FAILED)
            die("cannot map TORTURE_SHIM_CTL");
        g_ctl = p;
        if (g_ctl->magic != CTL_MAGIC)
            die("TORTURE_SHIM_CTL is not a control file");
    }
    /* Anonymous memory: only the pages of descriptors in use are ever touched. */
    void *t = mmap(NULL, sizeof(struct fdinfo) * MAX_FDS, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        die("cannot map the descriptor table");
    g_fds = t;
    /* Only this process is tracked: a program it execs would number its records
     * from 1 again in the same log. Its children start untracked. */
    unsetenv("TORTURE_SHIM_DIR");
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    g_active = 1;
}

/* Every exported function starts with this, before it reads a real_ pointer. */
#define ENSURE() pthread_once(&g_once, init)

static inline int active(void)
{
    return g_active;
}

/* Start-up before the program's main: the environment is read (and cleaned)
 * before the program copies it. */
__attribute__((constructor)) static void shim_start(void)
{
    ENSURE();
}

static inline void count(int which, uint64_t n)
{
    if (g_ctl)
        __atomic_fetch_add(&g_ctl->counters[which], n, __ATOMIC_RELAXED);
}

static inline struct fdinfo *tracked(int fd)
{
    if (!g_active || fd < 0 || fd >= MAX_FDS || !g_fds[fd].kind)
        return NULL;
    return &g_fds[fd];
}

/* ---- the log (caller holds g_lock) ------------------------------------- */

static uint64_t log_rec(char type, uint64_t dev, uint64_t ino, int64_t a, int64_t b,
                        int64_t c, int64_t d, int64_t e, int64_t f,
                        const void *p1, size_t n1, const void *p2, size_t n2)
{
    size_t total = sizeof(struct rec) + n1 + n2;
    char stackbuf[512];
    char *buf = total <= sizeof stackbuf ? stackbuf : malloc(total);
    if (!buf)
        die("out of memory for a log record");
    struct rec *r = (struct rec *)buf;
    r->magic = REC_MAGIC;
    r->type = (uint32_t)(unsigned char)type;
    r->total = total;
    r->seq = g_seq++;
    r->dev = dev;
    r->ino = ino;
    r->a = a; r->b = b; r->c = c; r->d = d; r->e = e; r->f = f;
    if (n1)
        memcpy(buf + sizeof *r, p1, n1);
    if (n2)
        memcpy(buf + sizeof *r + n1, p2, n2);
    int saved = errno;
    ssize_t w = real_write(g_logfd, buf, total);
    if (w != (ssize_t)total)
        die("cannot write the undo log");
    errno = saved;
    count(C_LOG_BYTES, total);
    uint64_t seq = r->seq;
    if (buf != stackbuf)
        free(buf);
    return seq;
}

/* ---- paths -------------------------------------------------------------- */

/* "/a/./b//../c" -> "/a/c", in place; path is absolute. */
static void normalize(char *path)
{
    char *out = path, *in = path;
    while (*in) {
        while (*in == '/')
            in++;
        if (!*in)
            break;
        char *end = strchr(in, '/');
        size_t len = end ? (size_t)(end - in) : strlen(in);
        if (len == 1 && in[0] == '.') {
            /* skip */
        } else if (len == 2 && in[0] == '.' && in[1] == '.') {
            while (out > path && *--out != '/')
                ;
        } else {
            *out++ = '/';
            memmove(out, in, len);
            out += len;
        }
        in += len;
    }
    if (out == path)
        *out++ = '/';
    *out = '\0';
}

/*
 * The real path a name would have: lexical resolution against the cwd or dirfd,
 * then realpath() of the parent (which exists whenever the call can succeed).
 * Returns 0 and fills out, or -1 if it cannot be resolved.
 */
static int resolve(int dirfd, const char *path, char *out)
{
    char tmp[PATH_MAX * 2];
    if (!path || !*path)
        return -1;
    if (path[0] == '/') {
        if (strlen(path) >= sizeof tmp)
            return -1;
        strcpy(tmp, path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base))
                return -1;
        } else {
            char proc[64];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(proc, base, sizeof base - 1);
            if (n <= 0)
                return -1;
            base[n] = '\0';
        }
        if (snprintf(tmp, sizeof tmp, "%s/%s", base, path) >= (int)sizeof tmp)
            return -1;
    }
    normalize(tmp);
    if (strcmp(tmp, "/") == 0) {
        strcpy(out, "/");
        return 0;
    }
    char *slash = strrchr(tmp, '/');
    char parent[PATH_MAX];
    *slash = '\0';
    if (!realpath(*tmp ? tmp : "/", parent))
        return -1;
    const char *name = slash + 1;
    int n = strcmp(parent, "/") == 0 ? snprintf(out, PATH_MAX, "/%s", name)
                                     : snprintf(out, PATH_MAX, "%s/%s", parent, name);
    return n < PATH_MAX ? 0 : -1;
}

/* 2: the root itself; 1: strictly inside it; 0: elsewhere. */
static int under_root(const char *real)
{
    if (strncmp(real, g_root, g_rootlen) != 0)
        return 0;
    if (real[g_rootlen] == '\0')
        return 2;
    return real[g_rootlen] == '/' ? 1 : 0;
}

static int excluded(const char *real)
{
    size_t n = strlen(real);
    return n >= 4 && strcmp(real + n - 4, "-shm") == 0;
}

/* dev/ino of the directory holding real (a resolved path). */
static int parent_id(const char *real, struct stat *st)
{
    char parent[PATH_MAX];
    strcpy(parent, real);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0';
    else
        *slash = '\0';
    return fstatat(AT_FDCWD, parent, st, 0);
}

static int fault_name(const char *base)
{
    const char *p = g_ctl->names, *end = g_ctl->names + sizeof g_ctl->names;
    while (p < end && *p) {
        size_t n = strnlen(p, (size_t)(end - p));
        if (strncmp(p, base, sizeof g_fds[0].base) == 0)
            return 1;
        p += n + 1;
    }
    return 0;
}

static int write_fault(struct fdinfo *fi)
{
    uint32_t e = g_ctl ? g_ctl->write_errno : 0;
    return e && fault_name(fi->base) ? (int)e : 0;
}

static int sync_fault(struct fdinfo *fi)
{
    uint32_t e = g_ctl ? g_ctl->sync_errno : 0;
    return e && fault_name(fi->base) ? (int)e : 0;
}

/* ---- opening ------------------------------------------------------------ */

/* Read all of [off, off+len) of a tracked file into buf (caller holds g_lock). */
static int read_old(int fd, struct fdinfo *fi, void *buf, size_t len, off_t off)
{
    int rfd = fd;
    int acc = real_fcntl(fd, F_GETFL) & O_ACCMODE;
    if (acc == O_WRONLY) {
        if (fi->rfd < 0) {
            char proc[64];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
            fi->rfd = real_open(proc, O_RDONLY | O_CLOEXEC);
            if (fi->rfd < 0)
                return -1;
        }
        rfd = fi->rfd;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(rfd, (char *)buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

/* Log a truncation of the tracked file open as fd (caller holds g_lock). */
static uint64_t log_truncate(int fd, struct fdinfo *fi, off_t new_size)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat before truncate");
    off_t old = st.st_size;
    size_t cut = new_size < old ? (size_t)(old - new_size) : 0;
    char *tail = NULL;
    if (cut) {
        tail = malloc(cut);
        if (!tail || read_old(fd, fi, tail, cut, new_size) != 0)
            die("reading the tail a truncate cuts");
    }
    uint64_t seq = log_rec('T', st.st_dev, st.st_ino, old, new_size, (int64_t)cut, 0,
                           0, 0, tail, cut, NULL, 0);
    free(tail);
    count(C_TRUNCATES, 1);
    return seq;
}

static void forget_fd(int fd)
{
    if (fd < 0 || fd >= MAX_FDS || !g_fds[fd].kind)
        return;
    if (g_fds[fd].rfd >= 0)
        real_close(g_fds[fd].rfd);
    g_fds[fd].kind = 0;
    g_fds[fd].rfd = -1;
}

static void adopt_fd(int fd, const char *real, int flags)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return;
    if (fd >= MAX_FDS) {
        count(C_LOST_FDS, 1);
        return;
    }
    struct fdinfo *fi = &g_fds[fd];
    forget_fd(fd);
    fi->kind = S_ISDIR(st.st_mode) ? 2 : 1;
    fi->rfd = -1;
    fi->dev = st.st_dev;
    fi->ino = st.st_ino;
    const char *slash = strrchr(real, '/');
    snprintf(fi->base, sizeof fi->base, "%s", slash ? slash + 1 : real);
    log_rec('O', st.st_dev, st.st_ino, flags, fi->kind == 2, 0, 0, 0, 0, real,
            strlen(real), NULL, 0);
    count(C_OPENS, 1);
}

static int open_common(int dirfd, const char *path, int flags, mode_t mode, int at64)
{
    char real[PATH_MAX];
    int (*ro)(const char *, int, ...) = at64 ? real_open64 : real_open;
    int (*rat)(int, const char *, int, ...) = at64 ? real_openat64 : real_openat;
#define REAL_OPEN() \
    (dirfd == AT_FDCWD ? ro(path, flags, mode) : rat(dirfd, path, flags, mode))
    if (!active() || resolve(dirfd, path, real) != 0 || !under_root(real) ||
        excluded(real) || (flags & O_PATH))
        return REAL_OPEN();

    pthread_mutex_lock(&g_lock);
    struct stat st;
    int exists = fstatat(AT_FDCWD, real, &st, AT_SYMLINK_NOFOLLOW) == 0;
    uint64_t create_seq = 0;
    if ((flags & O_CREAT) && !exists) {
        struct stat pst;
        if (parent_id(real, &pst) == 0) {
            create_seq = log_rec('C', pst.st_dev, pst.st_ino, 0, 0, 0, 0, 0, 0, real,
                                 strlen(real), NULL, 0);
            count(C_CREATES, 1);
        }
    }
    if ((flags & O_TRUNC) && exists && S_ISREG(st.st_mode) && st.st_size > 0 &&
        (flags & O_ACCMODE) != O_RDONLY) {
        /* Opening truncates: log the content it destroys, read through a twin. */
        int tfd = real_open(real, O_RDONLY | O_CLOEXEC);
        if (tfd >= 0 && tfd < MAX_FDS) {
            struct fdinfo tmp = {.kind = 1, .rfd = -1};
            log_truncate(tfd, &tmp, 0);
        }
        if (tfd >= 0)
            real_close(tfd);
    }
    int fd = REAL_OPEN();
    int saved = errno;
    if (fd >= 0) {
        if (create_seq && fstat(fd, &st) == 0)
            log_rec('R', st.st_dev, st.st_ino, (int64_t)create_seq, 0, 0, 0, 0, 0,
                    NULL, 0, NULL, 0);
        adopt_fd(fd, real, flags);
    } else if (create_seq) {
        log_rec('R', 0, 0, (int64_t)create_seq, -saved, 0, 0, 0, 0, NULL, 0, NULL, 0);
    }
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return fd;
#undef REAL_OPEN
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    ENSURE();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_common(AT_FDCWD, path, flags, mode, 0);
}

int open64(const char *path, int flags, ...)
{
    ENSURE();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_common(AT_FDCWD, path, flags, mode, 1);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    ENSURE();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_common(dirfd, path, flags, mode, 0);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    ENSURE();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_common(dirfd, path, flags, mode, 1);
}

int creat(const char *path, mode_t mode)
{
    ENSURE();
    return open_common(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 0);
}

int creat64(const char *path, mode_t mode)
{
    ENSURE();
    return open_common(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 1);
}

int close(int fd)
{
    ENSURE();
    if (!active())
        return real_close(fd);
    if (tracked(fd)) {
        pthread_mutex_lock(&g_lock);
        forget_fd(fd);
        int r = real_close(fd);
        int saved = errno;
        pthread_mutex_unlock(&g_lock);
        errno = saved;
        return r;
    }
    return real_close(fd);
}

static void copy_fd(int oldfd, int newfd)
{
    /* Caller holds g_lock; a dup shares the file and its offset. */
    if (newfd < 0 || newfd >= MAX_FDS)
        return;
    forget_fd(newfd);
    if (!tracked(oldfd))
        return;
    g_fds[newfd] = g_fds[oldfd];
    g_fds[newfd].rfd = -1;
}

int dup(int fd)
{
    ENSURE();
    if (!active())
        return real_dup(fd);
    pthread_mutex_lock(&g_lock);
    int r = real_dup(fd);
    int saved = errno;
    if (r >= 0)
        copy_fd(fd, r);
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
}

int dup2(int fd, int fd2)
{
    ENSURE();
    if (!active())
        return real_dup2(fd, fd2);
    pthread_mutex_lock(&g_lock);
    int r = real_dup2(fd, fd2);
    int saved = errno;
    if (r >= 0 && fd != fd2)
        copy_fd(fd, r);
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
}

int dup3(int fd, int fd2, int flags)
{
    ENSURE();
    if (!active())
        return real_dup3(fd, fd2, flags);
    pthread_mutex_lock(&g_lock);
    int r = real_dup3(fd, fd2, flags);
    int saved = errno;
    if (r >= 0)
        copy_fd(fd, r);
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
}

/* fcntl is interposed only so that F_DUPFD copies are tracked too. */
static int fcntl_common(int (*real)(int, int, ...), int fd, int cmd, void *arg)
{
    if (!active() || (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC) || !tracked(fd))
        return real(fd, cmd, arg);
    pthread_mutex_lock(&g_lock);
    int r = real(fd, cmd, arg);
    int saved = errno;
    if (r >= 0)
        copy_fd(fd, r);
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
}

int fcntl(int fd, int cmd, ...)
{
    ENSURE();
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(real_fcntl, fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
    ENSURE();
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(real_fcntl64 ? real_fcntl64 : real_fcntl, fd, cmd, arg);
}

/* ---- writing ------------------------------------------------------------ */

enum wkind { W_WRITE, W_PWRITE, W_PWRITE64, W_WRITEV, W_PWRITEV, W_PWRITEV64,
             W_PWRITEV2, W_PWRITEV64V2 };

static ssize_t call_real(enum wkind k, int fd, const void *buf, size_t n,
                         const struct iovec *iov, int cnt, off_t off, int flags)
{
    switch (k) {
    case W_WRITE: return real_write(fd, buf, n);
    case W_PWRITE: return real_pwrite(fd, buf, n, off);
    case W_PWRITE64: return real_pwrite64(fd, buf, n, off);
    case W_WRITEV: return real_writev(fd, iov, cnt);
    case W_PWRITEV: return real_pwritev(fd, iov, cnt, off);
    case W_PWRITEV64: return real_pwritev64(fd, iov, cnt, off);
    case W_PWRITEV2: return real_pwritev2(fd, iov, cnt, off, flags);
    case W_PWRITEV64V2: return real_pwritev64v2(fd, iov, cnt, off, flags);
    }
    errno = EINVAL;
    return -1;
}

/*
 * One write of n bytes (buf, or the iovec) to a tracked file: log the old and new
 * bytes, then write. off < 0 with a positional kind means "current offset"
 * (pwritev2's -1).
 */
static ssize_t tracked_write(enum wkind k, int fd, struct fdinfo *fi, const void *buf,
                             size_t n, const struct iovec *iov, int cnt, off_t off,
                             int flags)
{
    int e = write_fault(fi);
    if (e) {
        pthread_mutex_lock(&g_lock);
        log_rec('E', fi->dev, fi->ino, e, (int64_t)n, 0, 0, 0, 0, NULL, 0, NULL, 0);
        pthread_mutex_unlock(&g_lock);
        count(C_FAULT_WRITES, 1);
        errno = e;
        return -1;
    }
    char *gathered = NULL;
    if (iov) {
        n = 0;
        for (int i = 0; i < cnt; i++)
            n += iov[i].iov_len;
        gathered = malloc(n ? n : 1);
        if (!gathered)
            die("out of memory gathering an iovec");
        size_t at = 0;
        for (int i = 0; i < cnt; i++) {
            memcpy(gathered + at, iov[i].iov_base, iov[i].iov_len);
            at += iov[i].iov_len;
        }
        buf = gathered;
    }
    pthread_mutex_lock(&g_lock);
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat before a write");
    int fl = real_fcntl(fd, F_GETFL);
    int positional = k != W_WRITE && k != W_WRITEV && off >= 0;
    off_t at;
    if (fl & O_APPEND)
        at = st.st_size; /* Linux appends even for pwrite on O_APPEND */
    else if (positional)
        at = off;
    else
        at = lseek(fd, 0, SEEK_CUR);
    size_t old_len = at < st.st_size ? (size_t)(st.st_size - at) : 0;
    if (old_len > n)
        old_len = n;
    char *old = old_len ? malloc(old_len) : NULL;
    if (old_len && (!old || read_old(fd, fi, old, old_len, at) != 0))
        die("reading the bytes a write replaces");
    uint64_t seq = log_rec('W', fi->dev, fi->ino, at, st.st_size, (int64_t)old_len,
                           (int64_t)n, 0, 0, old, old_len, buf, n);
    free(old);
    ssize_t r = call_real(k, fd, buf, n, iov, cnt, off, flags);
    int saved = errno;
    if (r != (ssize_t)n)
        log_rec('R', 0, 0, (int64_t)seq, r < 0 ? -saved : r, 0, 0, 0, 0, NULL, 0,
                NULL, 0);
    if (r > 0 && (fl & (O_SYNC | O_DSYNC)))
        log_rec('S', fi->dev, fi->ino, (int64_t)g_seq, 0, 0, 0, 0, 0, NULL, 0, NULL,
                0);
    count(C_WRITES, 1);
    count(C_BYTES, n);
    if (g_ctl && fault_name(fi->base))
        count(C_NAMED_WRITES, 1);
    pthread_mutex_unlock(&g_lock);
    free(gathered);
    errno = saved;
    return r;
}

#define WRAP_WRITE(wk, buf, n, iov, cnt, off, flags)                               \
    do {                                                                           \
        struct fdinfo *fi = active() ? tracked(fd) : NULL;                         \
        if (fi && fi->kind == 1)                                                   \
            return tracked_write(wk, fd, fi, buf, n, iov, cnt, off, flags);        \
        return call_real(wk, fd, buf, n, iov, cnt, off, flags);                    \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n)
{
    ENSURE();
    WRAP_WRITE(W_WRITE, buf, n, NULL, 0, -1, 0);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    ENSURE();
    WRAP_WRITE(W_PWRITE, buf, n, NULL, 0, off, 0);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    ENSURE();
    WRAP_WRITE(W_PWRITE64, buf, n, NULL, 0, off, 0);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    ENSURE();
    WRAP_WRITE(W_WRITEV, NULL, 0, iov, cnt, -1, 0);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    ENSURE();
    WRAP_WRITE(W_PWRITEV, NULL, 0, iov, cnt, off, 0);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    ENSURE();
    WRAP_WRITE(W_PWRITEV64, NULL, 0, iov, cnt, off, 0);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
    ENSURE();
    WRAP_WRITE(W_PWRITEV2, NULL, 0, iov, cnt, off, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
    ENSURE();
    WRAP_WRITE(W_PWRITEV64V2, NULL, 0, iov, cnt, off, flags);
}

static int ftruncate_common(int (*real)(int, off_t), int fd, off_t len)
{
    struct fdinfo *fi = active() ? tracked(fd) : NULL;
    if (!fi || fi->kind != 1)
        return real(fd, len);
    pthread_mutex_lock(&g_lock);
    uint64_t seq = log_truncate(fd, fi, len);
    int r = real(fd, len);
    int saved = errno;
    if (r != 0)
        log_rec('R', 0, 0, (int64_t)seq, -saved, 0, 0, 0, 0, NULL, 0, NULL, 0);
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
}

int ftruncate(int fd, off_t len)
{
    ENSURE();
    return ftruncate_common(real_ftruncate, fd, len);
}

int ftruncate64(int fd, off_t len)
{
    ENSURE();
    return ftruncate_common(real_ftruncate64, fd, len);
}

static int truncate_common(int (*real)(const char *, off_t), const char *path,
                           off_t len)
{
    char real_path[PATH_MAX];
    if (!active() || resolve(AT_FDCWD, path, real_path) != 0 ||
        !under_root(real_path) || excluded(real_path))
        return real(path, len);
    pthread_mutex_lock(&g_lock);
    uint64_t seq = 0;
    int tfd = real_open(real_path, O_RDONLY | O_CLOEXEC);
    if (tfd >= 0) {
        struct stat st;
        if (fstat(tfd, &st) == 0 && S_ISREG(st.st_mode)) {
            struct fdinfo tmp = {.kind = 1, .rfd = -1};
            seq = log_truncate(tfd, &tmp, len);
        }
        real_close(tfd);
    }
    int r = real(path, len);
    int saved = errno;
    if (r != 0 && seq)
        log_rec('R', 0, 0, (int64_t)seq, -saved, 0, 0, 0, 0, NULL, 0, NULL, 0);
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
}

int truncate(const char *path, off_t len)
{
    ENSURE();
    return truncate_common(real_truncate, path, len);
}

int truncate64(const char *path, off_t len)
{
    ENSURE();
    return truncate_common(real_truncate64, path, len);
}

/* ---- syncing ------------------------------------------------------------ */

static int sync_common(int (*real)(int), int fd)
{
    struct fdinfo *fi = active() ? tracked(fd) : NULL;
    if (!fi)
        return real(fd);
    int is_dir = fi->kind == 2;
    int e = sync_fault(fi);
    pthread_mutex_lock(&g_lock);
    int64_t upto = (int64_t)g_seq;
    if (e) {
        log_rec('F', fi->dev, fi->ino, upto, is_dir, e, 1, 0, 0, NULL, 0, NULL, 0);
        pthread_mutex_unlock(&g_lock);
        count(C_FAULT_SYNCS, 1);
        count(C_FAILS, 1);
        errno = e;
        return -1;
    }
    pthread_mutex_unlock(&g_lock);
    /* Copy what the mark needs: fi may be reused if another thread closes fd. */
    dev_t dev = fi->dev;
    ino_t ino = fi->ino;
    int named = g_ctl && fault_name(fi->base);
    int r = real(fd);
    int saved = errno;
    pthread_mutex_lock(&g_lock);
    if (r == 0)
        log_rec('S', dev, ino, upto, is_dir, 0, 0, 0, 0, NULL, 0, NULL, 0);
    else
        log_rec('F', dev, ino, upto, is_dir, saved, 0, 0, 0, NULL, 0, NULL, 0);
    pthread_mutex_unlock(&g_lock);
    count(r != 0 ? C_FAILS : is_dir ? C_DIRSYNCS : C_SYNCS, 1);
    if (named && r == 0)
        count(C_NAMED_SYNCS, 1);
    errno = saved;
    return r;
}

int fsync(int fd)
{
    ENSURE();
    return sync_common(real_fsync, fd);
}

int fdatasync(int fd)
{
    ENSURE();
    return sync_common(real_fdatasync, fd);
}

/* ---- names -------------------------------------------------------------- */

/* Hard-link real into the graveyard; fills grave ("" if that failed). */
static void bury(const char *real, char *grave)
{
    grave[0] = '\0';
    if (!g_grave[0])
        return;
    int n = snprintf(grave, PATH_MAX, "%s/g%ld-%llu", g_grave, (long)getpid(),
                     (unsigned long long)++g_grave_n);
    if (n < 0 || n >= PATH_MAX || link(real, grave) != 0)
        grave[0] = '\0';
}

static int unlink_common(int dirfd, const char *path, int flags,
                         int (*call)(int, const char *, int))
{
    char real[PATH_MAX];
    if (!active() || resolve(dirfd, path, real) != 0 || under_root(real) != 1 ||
        excluded(real))
        return call(dirfd, path, flags);
    pthread_mutex_lock(&g_lock);
    struct stat st, pst;
    uint64_t seq = 0;
    char grave[PATH_MAX];
    grave[0] = '\0';
    if (fstatat(AT_FDCWD, real, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        parent_id(real, &pst) == 0) {
        int is_dir = S_ISDIR(st.st_mode);
        if (!is_dir)
            bury(real, grave);
        size_t n1 = strlen(real) + 1, n2 = strlen(grave) + 1;
        seq = log_rec('U', st.st_dev, st.st_ino, (int64_t)pst.st_dev,
                      (int64_t)pst.st_ino, is_dir, 0, 0, 0, real, n1, grave, n2);
        count(C_UNLINKS, 1);
    }
    int r = call(dirfd, path, flags);
    int saved = errno;
    if (r != 0 && seq) {
        log_rec('R', 0, 0, (int64_t)seq, -saved, 0, 0, 0, 0, NULL, 0, NULL, 0);
        if (grave[0])
            real_unlink(grave);
    }
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
}

static int call_unlink(int dirfd, const char *path, int flags)
{
    (void)dirfd;
    return flags & AT_REMOVEDIR ? real_rmdir(path) : real_unlink(path);
}

static int call_unlinkat(int dirfd, const char *path, int flags)
{
    return real_unlinkat(dirfd, path, flags);
}

int unlink(const char *path)
{
    ENSURE();
    return unlink_common(AT_FDCWD, path, 0, call_unlink);
}

int rmdir(const char *path)
{
    ENSURE();
    return unlink_common(AT_FDCWD, path, AT_REMOVEDIR, call_unlink);
}

int unlinkat(int dirfd, const char *path, int flags)
{
    ENSURE();
    return unlink_common(dirfd, path, flags, call_unlinkat);
}

static int rename_common(int odir, const char *old, int ndir, const char *new_,
                         unsigned flags, int which)
{
#define REAL_RENAME()                                                              \
    (which == 0   ? real_rename(old, new_)                                          \
     : which == 1 ? real_renameat(odir, old, ndir, new_)                            \
                  : real_renameat2(odir, old, ndir, new_, flags))
    char ro[PATH_MAX], rn[PATH_MAX];
    if (!active() || resolve(odir, old, ro) != 0 || resolve(ndir, new_, rn) != 0 ||
        (under_root(ro) != 1 && under_root(rn) != 1))
        return REAL_RENAME();
    pthread_mutex_lock(&g_lock);
    struct stat st, rst, op, np;
    uint64_t seq = 0;
    char grave[PATH_MAX];
    grave[0] = '\0';
    if (fstatat(AT_FDCWD, ro, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        parent_id(ro, &op) == 0 && parent_id(rn, &np) == 0) {
        memset(&rst, 0, sizeof rst);
        if (fstatat(AT_FDCWD, rn, &rst, AT_SYMLINK_NOFOLLOW) == 0 &&
            !S_ISDIR(rst.st_mode))
            bury(rn, grave);
        size_t n1 = strlen(ro) + 1, n2 = strlen(rn) + 1, n3 = strlen(grave) + 1;
        char *payload = malloc(n1 + n2 + n3);
        if (!payload)
            die("out of memory for a rename record");
        memcpy(payload, ro, n1);
        memcpy(payload + n1, rn, n2);
        memcpy(payload + n1 + n2, grave, n3);
        seq = log_rec('M', st.st_dev, st.st_ino, (int64_t)op.st_dev,
                      (int64_t)op.st_ino, (int64_t)np.st_dev, (int64_t)np.st_ino,
                      (int64_t)rst.st_dev, (int64_t)rst.st_ino, payload,
                      n1 + n2 + n3, NULL, 0);
        free(payload);
        count(C_RENAMES, 1);
    }
    int r = REAL_RENAME();
    int saved = errno;
    if (r != 0 && seq) {
        log_rec('R', 0, 0, (int64_t)seq, -saved, 0, 0, 0, 0, NULL, 0, NULL, 0);
        if (grave[0])
            real_unlink(grave);
    }
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
#undef REAL_RENAME
}

int rename(const char *old, const char *new_)
{
    ENSURE();
    return rename_common(AT_FDCWD, old, AT_FDCWD, new_, 0, 0);
}

int renameat(int odir, const char *old, int ndir, const char *new_)
{
    ENSURE();
    return rename_common(odir, old, ndir, new_, 0, 1);
}

int renameat2(int odir, const char *old, int ndir, const char *new_, unsigned flags)
{
    ENSURE();
    return rename_common(odir, old, ndir, new_, flags, 2);
}

static int mkdir_common(int dirfd, const char *path, mode_t mode)
{
#define REAL_MKDIR() \
    (dirfd == AT_FDCWD ? real_mkdir(path, mode) : real_mkdirat(dirfd, path, mode))
    char real[PATH_MAX];
    if (!active() || resolve(dirfd, path, real) != 0 || under_root(real) != 1)
        return REAL_MKDIR();
    pthread_mutex_lock(&g_lock);
    struct stat st, pst;
    uint64_t seq = 0;
    if (fstatat(AT_FDCWD, real, &st, AT_SYMLINK_NOFOLLOW) != 0 &&
        parent_id(real, &pst) == 0) {
        seq = log_rec('C', pst.st_dev, pst.st_ino, 1, 0, 0, 0, 0, 0, real,
                      strlen(real), NULL, 0);
        count(C_CREATES, 1);
    }
    int r = REAL_MKDIR();
    int saved = errno;
    if (seq) {
        if (r == 0 && fstatat(AT_FDCWD, real, &st, AT_SYMLINK_NOFOLLOW) == 0)
            log_rec('R', st.st_dev, st.st_ino, (int64_t)seq, 0, 0, 0, 0, 0, NULL, 0,
                    NULL, 0);
        else if (r != 0)
            log_rec('R', 0, 0, (int64_t)seq, -saved, 0, 0, 0, 0, NULL, 0, NULL, 0);
    }
    pthread_mutex_unlock(&g_lock);
    errno = saved;
    return r;
#undef REAL_MKDIR
}

int mkdir(const char *path, mode_t mode)
{
    ENSURE();
    return mkdir_common(AT_FDCWD, path, mode);
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
    ENSURE();
    return mkdir_common(dirfd, path, mode);
}
