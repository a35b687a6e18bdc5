/*
 * tierscale-workload: the SPEC §6 demo workload as one static binary, for images without Python
 * (the demo container image and the demo VM image). Behaves like src/tierscale/workload.py:
 *
 *   GET /work?ms=N  burns N ms of CPU (this thread's CPU clock, capped at 10 s) and answers
 *                   {"instance": "...", "ms": N}
 *   POST /work?ms=N reads the body (Content-Length required, else 411; at most 1 MiB, else 413), burns
 *                   the same N ms and answers the GET fields plus "method": "POST", "bytes" (body length)
 *                   and "fnv1a" (its 64-bit FNV-1a hash, 16 lowercase hex digits)
 *   GET /healthz    200 "ok" (POST: 405)
 *   other paths 404, a bad ms 400, other methods 501.
 *
 * HTTP/1.1 keep-alive (every response has Content-Length), one thread per connection (capped),
 * TCP_NODELAY. SIGTERM/SIGINT: stop accepting, let in-flight requests finish (at most 5 s), exit 0.
 *
 * usage: tierscale-workload [--port N (default 8080, 0 = any)] [--host ADDR (default 0.0.0.0)]
 *                           [--instance ID]
 * Instance id: --instance, else $TIERSCALE_REPLICA, else kernel cmdline tierscale.replica=ID, else the
 * SMBIOS serial (/sys/class/dmi/id/product_serial), else the hostname.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_MS 10000           /* one request can never pin a core for more than 10 s */
#define DRAIN_SECONDS 5        /* how long SIGTERM waits for in-flight requests */
#define MAX_CONNECTIONS 1024   /* beyond this, new connections wait in the listen backlog */
#define REQ_BUF 16384          /* request line + headers must fit */
#define IDLE_TIMEOUT_S 300     /* an idle keep-alive connection gives its thread back after this */
#define INSTANCE_MAX 256
#define MAX_BODY (1024 * 1024) /* POST bodies are demo payloads; a bigger one is refused before it is read */
#define LINGER_MS 1000         /* how long a refused request's unread body is drained before the close */
#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

static char instance[INSTANCE_MAX];
static volatile sig_atomic_t draining = 0;
static int wake_pipe[2] = {-1, -1}; /* the signal handler wakes the accept loop through this */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int inflight = 0;    /* requests being handled (not idle keep-alive connections) */
static int connections = 0; /* live connection threads */

static void on_signal(int sig) {
    (void)sig;
    int saved = errno;
    draining = 1;
    if (write(wake_pipe[1], "x", 1) < 0) { /* nothing to do: the pipe is already non-empty */ }
    errno = saved;
}

/* ---- instance id ------------------------------------------------------------------------------ */

static int set_instance(const char *s) {
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
    while (n > 0 && isspace((unsigned char)*s)) { s++; n--; }
    if (n == 0) return 0;
    if (n >= sizeof instance) n = sizeof instance - 1;
    memcpy(instance, s, n);
    instance[n] = 0;
    return 1;
}

static int read_small_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    return (int)n;
}

static int instance_from_cmdline(void) {
    char buf[4096];
    if (read_small_file("/proc/cmdline", buf, sizeof buf) <= 0) return 0;
    const char *key = "tierscale.replica=";
    for (char *tok = strtok(buf, " \t\n"); tok; tok = strtok(NULL, " \t\n"))
        if (strncmp(tok, key, strlen(key)) == 0) return set_instance(tok + strlen(key));
    return 0;
}

static int instance_from_smbios(void) {
    char buf[INSTANCE_MAX];
    if (read_small_file("/sys/class/dmi/id/product_serial", buf, sizeof buf) <= 0) return 0;
    /* Firmware placeholders are not an identity. */
    const char *junk[] = {"None", "Not Specified", "To be filled by O.E.M.", "0", "System Serial Number"};
    char tmp[INSTANCE_MAX];
    snprintf(tmp, sizeof tmp, "%s", buf);
    if (!set_instance(tmp)) return 0;
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        if (strcmp(instance, junk[i]) == 0) return 0;
    return 1;
}

static void resolve_instance(const char *flag) {
    if (flag && set_instance(flag)) return;
    const char *env = getenv("TIERSCALE_REPLICA");
    if (env && set_instance(env)) return;
    if (instance_from_cmdline()) return;
    if (instance_from_smbios()) return;
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    set_instance(host);
}

/* ---- CPU burn --------------------------------------------------------------------------------- */

static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Spin until this thread has used `ms` of CPU. The thread's CPU clock, not the wall clock: under
 * contention the request takes longer instead of costing less, so the CPU metric tracks the load. */
static void burn_cpu(int ms) {
    double end = thread_cpu_seconds() + ms / 1000.0;
    volatile unsigned long x = 0;
    while (thread_cpu_seconds() < end)
        for (int i = 0; i < 2000; i++) x += (unsigned long)i; /* mostly work, few clock reads */
}

/* ---- HTTP ------------------------------------------------------------------------------------- */

struct conn {
    int fd;
    char buf[REQ_BUF];
    size_t len; /* bytes in buf (may hold the start of a pipelined next request) */
};

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 411: return "Length Required";
    case 413: return "Request Entity Too Large";
    case 501: return "Not Implemented";
    default: return "Error";
    }
}

/* Send one response with `extra` headers (each ending in CRLF, or ""); returns 0 to keep the connection
 * open, -1 to close it. */
static int respond_with(int fd, int status, const char *ctype, const char *body, int keep_alive,
                        const char *extra) {
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    int close_after = !keep_alive || draining; /* a stopping replica sends clients elsewhere */
    size_t blen = strlen(body);
    char head[512];
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 %d %s\r\nServer: tierscale-workload/1\r\nDate: %s\r\n"
                        "Content-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                        status, reason(status), date, ctype, blen, extra,
                        close_after ? "Connection: close\r\n" : "");
    /* Headers and body in one segment: with two writes the body could wait for a delayed ACK. */
    size_t total = (size_t)hlen + blen;
    char *out = malloc(total);
    if (!out) return -1;
    memcpy(out, head, (size_t)hlen);
    memcpy(out + hlen, body, blen);
    int rc = send_all(fd, out, total);
    free(out);
    return (rc < 0 || close_after) ? -1 : 0;
}

static int respond(int fd, int status, const char *ctype, const char *body, int keep_alive) {
    return respond_with(fd, status, ctype, body, keep_alive, "");
}

/* Closing a socket with unread bytes makes the kernel send RST, which can destroy the error response
 * before the client reads it; so half-close and drain what the client still sends (at most LINGER_MS). */
static void linger_close(int fd) {
    shutdown(fd, SHUT_WR);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char sink[16384];
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = LINGER_MS - ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0) return;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return;
        if (recv(fd, sink, sizeof sink, 0) <= 0) return; /* EOF: the client has closed too */
    }
}

static uint64_t fnv1a_64(uint64_t h, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * FNV64_PRIME;
    return h;
}

/* What a POST body was, for the /work answer. */
struct body_info {
    int is_post;
    size_t bytes;
    uint64_t fnv1a;
};

/* JSON string escaping for the values we echo back (instance id, path, ms). */
static void json_str(char *out, size_t size, const char *s) {
    size_t o = 0;
    if (size < 3) return;
    out[o++] = '"';
    for (; *s && o + 8 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { out[o++] = '\\'; out[o++] = (char)c; }
        else if (c == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else if (c == '\r') { out[o++] = '\\'; out[o++] = 'r'; }
        else if (c == '\t') { out[o++] = '\\'; out[o++] = 't'; }
        else if (c < 0x20) o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
        else out[o++] = (char)c;
    }
    out[o++] = '"';
    out[o] = 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode a query value like urllib.parse: %XX escapes, '+' is a space. In place. */
static void url_decode(char *s) {
    char *o = s;
    for (; *s; s++) {
        if (*s == '+') *o++ = ' ';
        else if (*s == '%' && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
            *o++ = (char)(hexval(s[1]) * 16 + hexval(s[2]));
            s += 2;
        } else *o++ = *s;
    }
    *o = 0;
}

/* The ms parameter the way Python's int() reads it: optional whitespace and sign, decimal digits.
 * Returns -1 when it is not a non-negative integer; values beyond MAX_MS are capped. */
static long parse_ms(const char *s) {
    while (isspace((unsigned char)*s)) s++;
    int neg = 0;
    if (*s == '+' || *s == '-') neg = *s++ == '-';
    if (!isdigit((unsigned char)*s)) return -1;
    long v = 0;
    for (; isdigit((unsigned char)*s); s++)
        if (v <= MAX_MS) v = v * 10 + (*s - '0');
    while (isspace((unsigned char)*s)) s++;
    if (*s) return -1;
    if (neg && v != 0) return -1;
    return v > MAX_MS ? MAX_MS : v;
}

static int handle_work(int fd, char *query, int keep_alive, const struct body_info *bi) {
    /* parse_qs semantics: the last ms= wins, a missing ms means 0, a blank one is an error. */
    char raw[256] = "0";
    for (char *save = NULL, *kv = query ? strtok_r(query, "&;", &save) : NULL; kv;
         kv = strtok_r(NULL, "&;", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) continue; /* parse_qs drops fields without '=' even with keep_blank_values */
        *eq = 0;
        url_decode(kv);
        if (strcmp(kv, "ms") == 0) {
            snprintf(raw, sizeof raw, "%s", eq + 1);
            url_decode(raw);
        }
    }
    long ms = parse_ms(raw);
    char body[2048];
    if (ms < 0) {
        char esc[600];
        json_str(esc, sizeof esc, raw);
        snprintf(body, sizeof body, "{\"error\": \"ms must be a non-negative integer\", \"ms\": %s}\n", esc);
        return respond(fd, 400, "application/json", body, keep_alive);
    }
    burn_cpu((int)ms);
    char esc[INSTANCE_MAX * 6 + 3];
    json_str(esc, sizeof esc, instance);
    if (bi->is_post)
        snprintf(body, sizeof body,
                 "{\"instance\": %s, \"ms\": %ld, \"method\": \"POST\", \"bytes\": %zu, \"fnv1a\": \"%016" PRIx64
                 "\"}\n",
                 esc, ms, bi->bytes, bi->fnv1a);
    else
        snprintf(body, sizeof body, "{\"instance\": %s, \"ms\": %ld}\n", esc, ms);
    return respond(fd, 200, "application/json", body, keep_alive);
}

static int route(int fd, const char *method, char *target, int keep_alive, const struct body_info *bi) {
    if (strcmp(method, "GET") != 0 && !bi->is_post) {
        char esc[64], body[160];
        json_str(esc, sizeof esc, method);
        snprintf(body, sizeof body, "{\"error\": \"unsupported method\", \"method\": %s}\n", esc);
        return respond(fd, 501, "application/json", body, keep_alive);
    }
    char *query = strchr(target, '?');
    if (query) *query++ = 0;
    char *frag = strchr(target, '#');
    if (frag) *frag = 0;
    /* An absolute-form target (GET http://host/path) routes on its path, as urlsplit does. */
    if (strncmp(target, "http://", 7) == 0 || strncmp(target, "https://", 8) == 0) {
        char *p = strchr(strstr(target, "//") + 2, '/');
        target = p ? p : "";
    }
    if (strcmp(target, "/healthz") == 0) {
        if (bi->is_post)
            return respond_with(fd, 405, "application/json",
                                "{\"error\": \"method not allowed\", \"method\": \"POST\"}\n", keep_alive,
                                "Allow: GET\r\n");
        return respond(fd, 200, "text/plain; charset=utf-8", "ok", keep_alive);
    }
    if (strcmp(target, "/work") == 0) return handle_work(fd, query, keep_alive, bi);
    char esc[1024], body[1100];
    json_str(esc, sizeof esc, target);
    snprintf(body, sizeof body, "{\"error\": \"not found\", \"path\": %s}\n", esc);
    return respond(fd, 404, "application/json", body, keep_alive);
}

static void request_started(void) {
    pthread_mutex_lock(&mu);
    inflight++;
    pthread_mutex_unlock(&mu);
}

static void request_finished(void) {
    pthread_mutex_lock(&mu);
    inflight--;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&mu);
}

static int header_is(const char *line, const char *name, const char **value) {
    size_t n = strlen(name);
    if (strncasecmp(line, name, n) != 0 || line[n] != ':') return 0;
    const char *v = line + n + 1;
    while (*v == ' ' || *v == '\t') v++;
    *value = v;
    return 1;
}

/* A POST Content-Length the strict way: ASCII digits (optional surrounding blanks, as Python's strip()),
 * saturating just above MAX_BODY. Returns -1 when it is not a plain decimal number. */
static long parse_length(const char *s) {
    while (*s == ' ' || *s == '\t') s++;
    if (!isdigit((unsigned char)*s)) return -1;
    long v = 0;
    for (; isdigit((unsigned char)*s); s++)
        if (v <= MAX_BODY) v = v * 10 + (*s - '0');
    while (*s == ' ' || *s == '\t') s++;
    if (*s) return -1;
    return v > MAX_BODY ? MAX_BODY + 1 : v;
}

/* Handle one request from c->buf (complete headers end at `hdr_end`); returns -1 to close. */
static int handle_request(struct conn *c, char *hdr_end) {
    size_t used = (size_t)(hdr_end + 4 - c->buf);
    *hdr_end = 0;
    char *save = NULL;
    char *line = strtok_r(c->buf, "\r\n", &save);
    char *method = NULL, *target = NULL, *version = NULL;
    if (line) {
        char *s2 = NULL;
        method = strtok_r(line, " ", &s2);
        target = method ? strtok_r(NULL, " ", &s2) : NULL;
        version = target ? strtok_r(NULL, " ", &s2) : NULL;
    }
    if (!version || strncmp(version, "HTTP/1.", 7) != 0) {
        respond(c->fd, 400, "application/json", "{\"error\": \"bad request line\"}\n", 0);
        return -1;
    }
    int keep_alive = strcmp(version, "HTTP/1.0") != 0; /* 1.1 defaults to keep-alive, 1.0 to close */
    int http11 = strcmp(version, "HTTP/1.1") == 0; /* `version` points into buf, which is reused below */
    long content_length = 0; /* GET: lenient, only to skip a body */
    long post_length = -1;   /* POST: strict, -1 = none or invalid */
    int lengths = 0, lengths_differ = 0, transfer_encoding = 0, expect_continue = 0;
    for (char *h = strtok_r(NULL, "\r\n", &save); h; h = strtok_r(NULL, "\r\n", &save)) {
        const char *v;
        if (header_is(h, "Connection", &v)) {
            if (strncasecmp(v, "close", 5) == 0) keep_alive = 0;
            else if (strncasecmp(v, "keep-alive", 10) == 0) keep_alive = 1;
        } else if (header_is(h, "Content-Length", &v)) {
            content_length = strtol(v, NULL, 10);
            if (content_length < 0) content_length = 0;
            long strict = parse_length(v);
            if (lengths++ == 0) post_length = strict;
            else if (strict != post_length) lengths_differ = 1;
        } else if (header_is(h, "Transfer-Encoding", &v)) {
            transfer_encoding = 1;
        } else if (header_is(h, "Expect", &v)) {
            expect_continue = strncasecmp(v, "100-continue", 12) == 0;
        }
    }
    /* Keep a copy of the target: the buffer is reused for the body and the next request. */
    char tgt[4096];
    snprintf(tgt, sizeof tgt, "%s", target);
    char meth[32];
    snprintf(meth, sizeof meth, "%s", method);
    struct body_info bi = {.is_post = strcmp(meth, "POST") == 0, .bytes = 0, .fnv1a = FNV64_OFFSET};

    if (bi.is_post) {
        /* A refusal closes the connection: the body's framing is unknown (no or a bad Content-Length,
         * chunked) or the body is not going to be read, so the stream cannot be resynchronised. */
        int status = 0;
        const char *err = NULL;
        if (lengths == 0 || transfer_encoding) {
            status = 411;
            err = "{\"error\": \"Content-Length required\"}\n";
        } else if (post_length < 0 || lengths_differ) {
            status = 400;
            err = "{\"error\": \"bad Content-Length\"}\n";
        } else if (post_length > MAX_BODY) {
            status = 413;
            err = "{\"error\": \"body too large\", \"max_bytes\": 1048576}\n";
        }
        if (status) {
            respond(c->fd, status, "application/json", err, 0);
            linger_close(c->fd);
            return -1;
        }
        content_length = post_length;
    }

    size_t rest = c->len - used;
    memmove(c->buf, c->buf + used, rest);
    c->len = rest;
    /* A client that sent Expect: 100-continue waits (curl: 1 s) for this before uploading the body. */
    if (expect_continue && http11 && (size_t)content_length > c->len &&
        send_all(c->fd, "HTTP/1.1 100 Continue\r\n\r\n", 25) < 0)
        return -1;
    /* Consume the whole body (hashing a POST's as it arrives), so its bytes are not parsed as the next
     * request on this keep-alive connection. */
    while (content_length > 0) {
        if (c->len > 0) {
            size_t take = (size_t)content_length < c->len ? (size_t)content_length : c->len;
            if (bi.is_post) {
                bi.fnv1a = fnv1a_64(bi.fnv1a, c->buf, take);
                bi.bytes += take;
            }
            memmove(c->buf, c->buf + take, c->len - take);
            c->len -= take;
            content_length -= (long)take;
            continue;
        }
        ssize_t n = recv(c->fd, c->buf, sizeof c->buf - 1, 0);
        if (n <= 0) return -1; /* the client hung up mid-body: nobody to answer */
        c->len = (size_t)n;
    }
    return route(c->fd, meth, tgt, keep_alive, &bi);
}

static void *connection_main(void *arg) {
    struct conn *c = arg;
    for (;;) {
        char *end = NULL;
        int counted = 0;
        /* Read until the headers are complete. */
        for (;;) {
            c->buf[c->len] = 0;
            end = c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
            if (end) break;
            if (c->len >= sizeof c->buf - 1) {
                respond(c->fd, 413, "application/json", "{\"error\": \"headers too large\"}\n", 0);
                goto done;
            }
            ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) goto done; /* peer closed, idle timeout, or error */
            c->len += (size_t)n;
            if (!counted) {
                /* In flight from its first byte, so a SIGTERM during header parsing still waits. */
                request_started();
                counted = 1;
            }
        }
        if (!counted) request_started();
        int rc = handle_request(c, end);
        request_finished();
        if (rc < 0) break;
        continue;
    done:
        if (counted) request_finished();
        break;
    }
    close(c->fd);
    free(c);
    pthread_mutex_lock(&mu);
    connections--;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* ---- main ------------------------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr, "usage: tierscale-workload [--port N] [--host ADDR] [--instance ID]\n");
    exit(2);
}

static int listen_on(const char *host, int port, char *bound, size_t bsize) {
    struct sockaddr_storage ss;
    socklen_t slen;
    memset(&ss, 0, sizeof ss);
    int family = strchr(host, ':') ? AF_INET6 : AF_INET;
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) return -2;
        slen = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) return -2;
        slen = sizeof *a;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, slen) < 0 || listen(fd, 1024) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    getsockname(fd, (struct sockaddr *)&ss, &slen);
    int actual = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
    snprintf(bound, bsize, family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, actual);
    return fd;
}

int main(int argc, char **argv) {
    int port = 8080;
    const char *host = "0.0.0.0"; /* in a container or VM the service must be reachable from outside */
    const char *inst = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *e;
            long p = strtol(argv[++i], &e, 10);
            if (*e || p < 0 || p > 65535) usage();
            port = (int)p;
        } else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
        else if (strcmp(argv[i], "--instance") == 0 && i + 1 < argc) inst = argv[++i];
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: tierscale-workload [--port N (default 8080)] [--host ADDR (default 0.0.0.0)] "
                   "[--instance ID]\n");
            return 0;
        } else usage();
    }
    resolve_instance(inst);

    if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0) { perror("pipe"); return 1; }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    char bound[128];
    int lfd = listen_on(host, port, bound, sizeof bound);
    if (lfd == -2) { fprintf(stderr, "tierscale-workload: bad --host %s\n", host); return 2; }
    if (lfd < 0) {
        fprintf(stderr, "tierscale-workload: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        return 1;
    }
    fprintf(stderr, "tierscale-workload listening on http://%s instance=%s\n", bound, instance);

    /* Worker threads never take the signals: the accept loop (this thread) handles them. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024); /* buffers are on the heap; keep 1024 threads cheap */

    struct pollfd pfd[2] = {{.fd = lfd, .events = POLLIN}, {.fd = wake_pipe[0], .events = POLLIN}};
    while (!draining) {
        pthread_mutex_lock(&mu);
        while (connections >= MAX_CONNECTIONS && !draining) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
            pthread_cond_timedwait(&cond, &mu, &ts);
        }
        pthread_mutex_unlock(&mu);
        if (draining) break;
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) continue;
            perror("poll");
            return 1;
        }
        if (!(pfd[0].revents & POLLIN)) continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue; /* EINTR, ECONNABORTED, EMFILE: try again */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {.tv_sec = IDLE_TIMEOUT_S};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        struct conn *c = malloc(sizeof *c);
        if (!c) { close(fd); continue; }
        c->fd = fd;
        c->len = 0;
        pthread_t t;
        pthread_sigmask(SIG_BLOCK, &block, &old);
        pthread_mutex_lock(&mu);
        connections++;
        pthread_mutex_unlock(&mu);
        int err = pthread_create(&t, &attr, connection_main, c);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (err) {
            pthread_mutex_lock(&mu);
            connections--;
            pthread_mutex_unlock(&mu);
            close(fd);
            free(c);
        }
    }
    /* Closing the listener makes new connections fail fast (refused), so the balancer retries
     * another replica, while accepted requests keep running in their threads. */
    close(lfd);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += DRAIN_SECONDS;
    pthread_mutex_lock(&mu);
    while (inflight > 0)
        if (pthread_cond_timedwait(&cond, &mu, &deadline) == ETIMEDOUT) break;
    pthread_mutex_unlock(&mu);
    return 0;
}
