// trace_bpf.cpp — load/attach bpf/kgmp_trace.bpf.c, map its shared memory, one Ring per P.
//
// What: see trace_bpf.h. The order in open() matters:
//   1. libbpf >= 1.4 and /sys/kernel/btf/vmlinux present (clear errors before libbpf's);
//   2. open the skeleton, set rodata target_tgid = getpid(), read the inner ring template's
//      size (libbpf frees the template during load);
//   3. load (creates the maps; the verifier runs here);
//   4. mmap kgmp_shared, set hdr.nprocs and every M slot's p = KGMP_NO_P, cpu = -1, BEFORE
//      attaching, so that the program never sees a zero slot claiming P 0;
//   5. create P 0..nprocs-1's rings and insert them into kgmp_rings;
//   6. attach sched_switch, then sched_wakeup.
//   A failure at any step unwinds the earlier ones (the destructor handles a partial object).
//
// libbpf's messages: one process-wide print callback, installed once. While an open() runs,
// every message is captured; on failure the capture becomes last_log() and a Status payload,
// and its warnings go to stderr only when the failure is not a plain lack of privileges
// (a verifier rejection or a kernel without a needed feature, which a developer must see).
// Outside open(), libbpf is silent. KGMP_BPF_DEBUG=1 prints everything, live.
//
// Errors are one line: "<what failed>: <strerror> (<why / what to do>)".
//
// Rejected: printing libbpf's warnings on every failure (a non-root start would print a
// paragraph about RLIMIT_MEMLOCK and CONFIG_BPF_SYSCALL before the runtime falls back to
// poll: the one-line Status says it better); ring_buffer__poll (see trace_bpf.h).
#include "trace_bpf.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_format.h"
#include "kgmp_trace.skel.h"

namespace kgmp::internal {

struct RingClaims {
  std::atomic<bool> taken[KGMP_MAX_PROCS] = {};
};

namespace {

// ---- libbpf's print callback -----------------------------------------------------------
struct LogLine {
  bool warn;
  std::string text;  // one libbpf message, possibly several lines (a verifier log)
};
std::mutex g_log_mu;
bool g_capturing = false;        // guarded by g_log_mu
std::vector<LogLine> g_capture;  // guarded by g_log_mu
std::string g_last_log;          // guarded by g_log_mu
std::mutex g_open_mu;            // one open() at a time (the capture is process-wide)

bool debug_env() {
  static const bool on = [] {
    const char* e = std::getenv("KGMP_BPF_DEBUG");
    return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0;
  }();
  return on;
}

int print_fn(enum libbpf_print_level level, const char* fmt, va_list ap) {
  char small[512];
  va_list ap2;
  va_copy(ap2, ap);
  int n = std::vsnprintf(small, sizeof small, fmt, ap);
  std::string msg;
  if (n < 0) {
    va_end(ap2);
    return 0;
  }
  if (static_cast<size_t>(n) < sizeof small) {
    msg.assign(small, static_cast<size_t>(n));
  } else {
    msg.resize(static_cast<size_t>(n) + 1);
    std::vsnprintf(msg.data(), msg.size(), fmt, ap2);
    msg.resize(static_cast<size_t>(n));
  }
  va_end(ap2);
  if (debug_env()) std::fprintf(stderr, "kgmp: %s", msg.c_str());
  std::lock_guard<std::mutex> g(g_log_mu);
  if (g_capturing) g_capture.push_back({level == LIBBPF_WARN, std::move(msg)});
  return 0;
}

void install_print() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(print_fn); });
}

// Everything libbpf said since the capture began.
std::string captured_text() {
  std::lock_guard<std::mutex> g(g_log_mu);
  std::string all;
  for (const LogLine& l : g_capture) all += l.text;
  return all;
}

// Captures libbpf's messages for the scope (one open() at a time, under g_open_mu).
class Capture {
 public:
  Capture() {
    std::lock_guard<std::mutex> g(g_log_mu);
    g_capturing = true;
    g_capture.clear();
  }
  ~Capture() {
    std::lock_guard<std::mutex> g(g_log_mu);
    g_capturing = false;
    g_capture.clear();
  }
  // Keeps the log as last_log(), attaches it to `st`, and prints libbpf's warnings to stderr
  // unless `quiet` (a plain lack of privileges, which the message explains fully).
  absl::Status fail(absl::Status st, bool quiet) const {
    std::lock_guard<std::mutex> g(g_log_mu);
    std::string all;
    for (const LogLine& l : g_capture) {
      all += l.text;
      if (!quiet && !debug_env() && l.warn) std::fprintf(stderr, "kgmp: %s", l.text.c_str());
    }
    g_last_log = all;
    if (!all.empty()) st.SetPayload(TraceBpf::kLogPayload, absl::Cord(all));
    return st;
  }
};

std::string errstr(int err) { return std::strerror(err < 0 ? -err : err); }

// CapEff bits of this process: CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
bool has_bpf_caps() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    unsigned long long caps = std::strtoull(line.c_str() + 7, nullptr, 16);
    bool sys_admin = caps & (1ull << 21);
    bool perfmon = caps & (1ull << 38);
    bool bpf = caps & (1ull << 39);
    return (bpf && perfmon) || sys_admin;
  }
  return false;
}

// "(the verifier rejected <prog>: <its last complaint>)" from a captured load log, or "".
std::string verifier_reason(const std::string& log) {
  size_t begin = log.find("-- BEGIN PROG LOAD LOG --");
  if (begin == std::string::npos) return "";
  std::string prog = "a program";
  size_t q = log.rfind("prog '", begin);
  if (q != std::string::npos) {
    size_t e = log.find('\'', q + 6);
    if (e != std::string::npos && e < begin) prog = log.substr(q + 6, e - q - 6);
  }
  size_t end = log.find("-- END PROG LOAD LOG --", begin);
  std::string_view body(log);
  body = body.substr(begin, end == std::string::npos ? std::string_view::npos : end - begin);
  // The complaint is the last line that is not the statistics ("processed N insns ...",
  // "verification time ...", "stack depth ...").
  std::string_view last;
  while (!body.empty()) {
    size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    body.remove_prefix(nl == std::string_view::npos ? body.size() : nl + 1);
    if (line.empty() || line.find("-- BEGIN PROG LOAD LOG --") != std::string_view::npos ||
        line.rfind("processed ", 0) == 0 || line.rfind("verification time", 0) == 0 ||
        line.rfind("stack depth", 0) == 0)
      continue;
    last = line;
  }
  if (last.empty()) return absl::StrFormat(" (the verifier rejected %s)", prog);
  return absl::StrFormat(" (the verifier rejected %s: %s)", prog, last);
}

std::string privilege_hint() {
  return has_bpf_caps()
             ? " (the process has CAP_BPF+CAP_PERFMON: kernel lockdown or a security module "
               "forbids it; see dmesg)"
             : " (needs root or CAP_BPF+CAP_PERFMON)";
}

bool is_privilege_error(int err) {
  err = err < 0 ? -err : err;
  return err == EPERM || err == EACCES;
}

}  // namespace

// ---- version -----------------------------------------------------------------------------
const char* TraceBpf::libbpf_version() { return libbpf_version_string(); }

absl::Status check_libbpf_version() {
  unsigned major = libbpf_major_version(), minor = libbpf_minor_version();
  if (major > 1 || (major == 1 && minor >= 4)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "libbpf %s is linked in, kgmp needs >= 1.4 (a dynamic link picked up an old "
      "libbpf.so.1; link libbpf.a statically)",
      libbpf_version_string()));
}

int TraceBpf::shared_map_fd() const { return bpf_map__fd(skel_->maps.kgmp_shared); }

std::string TraceBpf::last_log() {
  std::lock_guard<std::mutex> g(g_log_mu);
  return g_last_log;
}

// ---- TraceBpf ----------------------------------------------------------------------------
absl::StatusOr<std::unique_ptr<TraceBpf>> TraceBpf::open(int nprocs) {
  if (absl::Status st = check_libbpf_version(); !st.ok()) return st;
  if (nprocs < 1 || nprocs > KGMP_MAX_PROCS)
    return absl::InvalidArgumentError(absl::StrFormat(
        "cannot load the BPF program for %d processors: it watches 1 to %d", nprocs,
        KGMP_MAX_PROCS));
  if (access("/sys/kernel/btf/vmlinux", R_OK) != 0)
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot load the BPF program: /sys/kernel/btf/vmlinux: %s (needs a kernel built with "
        "CONFIG_DEBUG_INFO_BTF=y)",
        errstr(errno)));
  install_print();
  std::lock_guard<std::mutex> serial(g_open_mu);
  Capture cap;
  std::unique_ptr<TraceBpf> t(new TraceBpf());
  absl::Status st = t->init(nprocs);
  if (!st.ok()) {
    // Lack of privileges is expected (the runtime falls back to poll) and fully explained by
    // the message; anything else prints libbpf's warnings (the verifier log).
    bool quiet = absl::IsPermissionDenied(st);
    return cap.fail(std::move(st), quiet);
  }
  return t;
}

absl::Status TraceBpf::init(int nprocs) {
  for (int& fd : ring_fds_) fd = -1;
  claims_ = std::make_shared<RingClaims>();
  nprocs_ = nprocs;

  skel_ = kgmp_trace__open();
  if (skel_ == nullptr) {
    int err = errno;
    return absl::InternalError(
        absl::StrFormat("cannot open the BPF object kgmp_trace: %s", errstr(err)));
  }
  skel_->rodata->target_tgid = static_cast<__u32>(getpid());
  bpf_map* inner = bpf_map__inner_map(skel_->maps.kgmp_rings);
  if (inner == nullptr)
    return absl::InternalError("cannot open the BPF object kgmp_trace: kgmp_rings has no inner "
                               "ring buffer template");
  const __u32 ring_bytes = bpf_map__max_entries(inner);

  if (int err = kgmp_trace__load(skel_); err != 0) {
    std::string why = verifier_reason(captured_text());
    if (why.empty() && is_privilege_error(err))
      return absl::PermissionDeniedError(absl::StrFormat(
          "cannot load the BPF program: %s%s", errstr(err), privilege_hint()));
    if (why.empty())
      why = " (the kernel lacks something it needs: tp_btf programs, ring buffers or mmap-able "
            "arrays; set KGMP_BPF_DEBUG=1 for libbpf's log)";
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot load the BPF program: %s%s", errstr(err), why));
  }

  // The shared memory.
  const int shared_fd = bpf_map__fd(skel_->maps.kgmp_shared);
  if (bpf_map__value_size(skel_->maps.kgmp_shared) != sizeof(kgmp_shared))
    return absl::InternalError(absl::StrFormat(
        "the BPF object's kgmp_shared value is %u bytes, kgmp_trace.h says %zu: rebuild",
        bpf_map__value_size(skel_->maps.kgmp_shared), sizeof(kgmp_shared)));
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  shared_len_ = (sizeof(kgmp_shared) + page - 1) / page * page;
  void* mem = mmap(nullptr, shared_len_, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
  if (mem == MAP_FAILED) {
    int err = errno;
    shared_len_ = 0;
    return absl::InternalError(
        absl::StrFormat("cannot map the BPF map kgmp_shared: %s", errstr(err)));
  }
  shared_ = static_cast<kgmp_shared*>(mem);
  // Before attaching: no slot may claim P 0 by being zero.
  for (kgmp_m_shared& m : shared_->m) {
    std::atomic_ref<__u32>(m.p).store(KGMP_NO_P, std::memory_order_relaxed);
    std::atomic_ref<__u32>(m.cpu).store(~0u, std::memory_order_relaxed);
  }
  std::atomic_ref<__u32>(shared_->hdr.nprocs).store(static_cast<__u32>(nprocs),
                                                    std::memory_order_release);

  // The per-core telemetry counters (read-only here: only BPF writes them).
  if (bpf_map__value_size(skel_->maps.kgmp_cores) != sizeof(kgmp_cores))
    return absl::InternalError(absl::StrFormat(
        "the BPF object's kgmp_cores value is %u bytes, kgmp_trace.h says %zu: rebuild",
        bpf_map__value_size(skel_->maps.kgmp_cores), sizeof(kgmp_cores)));
  cores_len_ = (sizeof(kgmp_cores) + page - 1) / page * page;
  void* cmem = mmap(nullptr, cores_len_, PROT_READ, MAP_SHARED,
                    bpf_map__fd(skel_->maps.kgmp_cores), 0);
  if (cmem == MAP_FAILED) {
    int err = errno;
    cores_len_ = 0;
    return absl::InternalError(
        absl::StrFormat("cannot map the BPF map kgmp_cores: %s", errstr(err)));
  }
  cores_ = static_cast<kgmp_cores*>(cmem);

  // One ring per P.
  tids_fd_ = bpf_map__fd(skel_->maps.kgmp_tids);
  const int rings_fd = bpf_map__fd(skel_->maps.kgmp_rings);
  for (int p = 0; p < nprocs; p++) {
    char name[16];
    std::snprintf(name, sizeof name, "kgmp_ring%d", p);
    int fd = bpf_map_create(BPF_MAP_TYPE_RINGBUF, name, 0, 0, ring_bytes, nullptr);
    if (fd < 0) {
      int err = fd;
      if (is_privilege_error(err))
        return absl::PermissionDeniedError(absl::StrFormat(
            "cannot create the ring buffer of P %d: %s%s", p, errstr(err), privilege_hint()));
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cannot create the ring buffer of P %d (%u bytes): %s", p, ring_bytes, errstr(err)));
    }
    ring_fds_[p] = fd;
    __u32 key = static_cast<__u32>(p);
    if (int err = bpf_map_update_elem(rings_fd, &key, &fd, BPF_ANY); err != 0)
      return absl::InternalError(absl::StrFormat(
          "cannot insert the ring buffer of P %d into kgmp_rings: %s", p, errstr(err)));
  }

  // Attach.
  struct {
    bpf_program* prog;
    bpf_link** link;
    const char* tp;
  } progs[] = {{skel_->progs.kgmp_switch, &skel_->links.kgmp_switch, "tp_btf/sched_switch"},
               {skel_->progs.kgmp_wakeup, &skel_->links.kgmp_wakeup, "tp_btf/sched_wakeup"}};
  for (auto& pr : progs) {
    bpf_link* link = bpf_program__attach(pr.prog);
    if (link == nullptr) {
      int err = errno;
      if (is_privilege_error(err))
        return absl::PermissionDeniedError(
            absl::StrFormat("cannot attach the BPF program %s to %s: %s%s",
                            bpf_program__name(pr.prog), pr.tp, errstr(err), privilege_hint()));
      return absl::FailedPreconditionError(
          absl::StrFormat("cannot attach the BPF program %s to %s: %s",
                          bpf_program__name(pr.prog), pr.tp, errstr(err)));
    }
    *pr.link = link;
  }
  return absl::OkStatus();
}

TraceBpf::~TraceBpf() {
  // Detach first (destroy closes the links, then the maps); then the mapping and the rings
  // (a live Ring keeps its own reference to its ring).
  if (skel_ != nullptr) kgmp_trace__destroy(skel_);
  if (shared_ != nullptr) munmap(shared_, shared_len_);
  if (cores_ != nullptr) munmap(cores_, cores_len_);
  for (int p = 0; p < nprocs_; p++)
    if (ring_fds_[p] >= 0) close(ring_fds_[p]);
}

std::vector<unsigned> TraceBpf::prog_ids() const {
  std::vector<unsigned> ids;
  for (bpf_program* prog : {skel_->progs.kgmp_switch, skel_->progs.kgmp_wakeup}) {
    bpf_prog_info info{};
    __u32 len = sizeof info;
    if (bpf_prog_get_info_by_fd(bpf_program__fd(prog), &info, &len) == 0) ids.push_back(info.id);
  }
  return ids;
}

absl::Status TraceBpf::register_m(int tid, unsigned slot) {
  if (slot >= KGMP_MAX_MS)
    return absl::InvalidArgumentError(absl::StrFormat(
        "cannot watch thread %d: M slot %u is beyond the %d slots BPF watches", tid, slot,
        KGMP_MAX_MS));
  __u32 key = static_cast<__u32>(tid), val = slot;
  if (int err = bpf_map_update_elem(tids_fd_, &key, &val, BPF_ANY); err != 0)
    return absl::InternalError(absl::StrFormat("cannot watch thread %d (M slot %u): %s", tid,
                                               slot, errstr(err)));
  return absl::OkStatus();
}

void TraceBpf::arm_slice(int p) {
  kgmp_arm_args args{static_cast<__u32>(p), 0};
  bpf_test_run_opts opts{};
  opts.sz = sizeof opts;
  opts.ctx_in = &args;
  opts.ctx_size_in = sizeof args;
  (void)bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.kgmp_arm_slice), &opts);
}

absl::Status TraceBpf::unregister_m(int tid) {
  __u32 key = static_cast<__u32>(tid);
  if (int err = bpf_map_delete_elem(tids_fd_, &key); err != 0)
    return err == -ENOENT ? absl::NotFoundError(absl::StrFormat(
                                "cannot stop watching thread %d: it is not registered", tid))
                          : absl::InternalError(absl::StrFormat(
                                "cannot stop watching thread %d: %s", tid, errstr(err)));
  return absl::OkStatus();
}

// ---- Ring --------------------------------------------------------------------------------
namespace {
constexpr uint32_t kTagRing = 1;
constexpr uint32_t kTagWake = 2;
}  // namespace

absl::StatusOr<std::unique_ptr<TraceBpf::Ring>> TraceBpf::open_ring(int p) {
  if (p < 0 || p >= nprocs_)
    return absl::InvalidArgumentError(
        absl::StrFormat("no ring for P %d: the program watches Ps 0 to %d", p, nprocs_ - 1));
  bool expected = false;
  if (!claims_->taken[p].compare_exchange_strong(expected, true))
    return absl::FailedPreconditionError(absl::StrFormat(
        "P %d's ring already has a consumer (one per ring: destroy it first)", p));
  std::unique_ptr<Ring> r(new Ring());
  r->p_ = p;
  r->claims_ = claims_;  // from here on, ~Ring releases the claim
  auto fail = [&](const char* what) {
    int err = errno;
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot open P %d's ring: %s: %s", p, what, errstr(err)));
  };
  r->map_fd_ = fcntl(ring_fds_[p], F_DUPFD_CLOEXEC, 0);
  if (r->map_fd_ < 0) return fail("dup");
  r->epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (r->epfd_ < 0) return fail("epoll_create1");
  r->evfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (r->evfd_ < 0) return fail("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u32 = kTagRing;
  if (epoll_ctl(r->epfd_, EPOLL_CTL_ADD, r->map_fd_, &ev) != 0) return fail("epoll_ctl");
  ev.data.u32 = kTagWake;
  if (epoll_ctl(r->epfd_, EPOLL_CTL_ADD, r->evfd_, &ev) != 0) return fail("epoll_ctl");
  r->rb_ = ring_buffer__new(r->map_fd_, &Ring::on_sample, r.get(), nullptr);
  if (r->rb_ == nullptr) return fail("ring_buffer__new");
  return r;
}

std::unique_ptr<TraceBpf::Ring> TraceBpf::ring(int p) {
  auto r = open_ring(p);
  if (!r.ok()) return nullptr;
  return std::move(*r);
}

TraceBpf::Ring::~Ring() {
  if (rb_ != nullptr) ring_buffer__free(rb_);
  if (evfd_ >= 0) close(evfd_);
  if (epfd_ >= 0) close(epfd_);
  if (map_fd_ >= 0) close(map_fd_);
  if (claims_ != nullptr && p_ >= 0) claims_->taken[p_].store(false);
}

int TraceBpf::Ring::wait(int timeout_ms) {
  epoll_event evs[2];
  int n = epoll_wait(epfd_, evs, 2, timeout_ms);
  if (n < 0) return -errno;
  if (n == 0) return 0;
  bool woken = false;
  for (int i = 0; i < n; i++) {
    if (evs[i].data.u32 == kTagRing) return 1;  // data wins; a wake stays pending
    if (evs[i].data.u32 == kTagWake) woken = true;
  }
  if (woken) {
    uint64_t v;
    ssize_t r = read(evfd_, &v, sizeof v);  // resets the eventfd (EAGAIN: a racing wait ate it)
    (void)r;
    return 2;
  }
  return 0;
}

void TraceBpf::Ring::wake() {
  uint64_t one = 1;
  ssize_t r = write(evfd_, &one, sizeof one);
  (void)r;
}

int TraceBpf::Ring::on_sample(void* ctx, void* data, size_t size) {
  auto* self = static_cast<Ring*>(ctx);
  if (size < sizeof(kgmp_block_event) || self->fn_ == nullptr) return 0;
  kgmp_block_event ev;
  std::memcpy(&ev, data, sizeof ev);
  self->fn_(self->ctx_, ev);
  return 0;
}

int TraceBpf::Ring::consume_raw(void (*fn)(void*, const kgmp_block_event&), void* ctx) {
  fn_ = fn;
  ctx_ = ctx;
  int n = ring_buffer__consume(rb_);
  fn_ = nullptr;
  ctx_ = nullptr;
  return n;
}

}  // namespace kgmp::internal
