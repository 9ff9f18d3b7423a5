// poll.cpp — the poll monitor (DESIGN §4): no event source at all.
//
// Under poll the kernel reports nothing; the runtime's sysmon (handoff.cpp) is the whole
// monitor: Go's retake loop over the leases of Ms inside kgmp::blocking(), with Go's back-off.
// It needs no privileges, so it is the fallback wherever BPF cannot load.
#include "monitor.h"

namespace kgmp::internal {
namespace {

class PollMonitor final : public Monitor {
 public:
  const char* name() const override { return "poll"; }
};

}  // namespace

std::unique_ptr<Monitor> make_poll_monitor() { return std::make_unique<PollMonitor>(); }

}  // namespace kgmp::internal
