// kgmp/kgmp.h — the whole public API of kgmp, a Go-style G/M/P runtime for C++.
#pragma once

#include "kgmp/chan.h"       // IWYU pragma: export
#include "kgmp/context.h"    // IWYU pragma: export
#include "kgmp/runtime.h"    // IWYU pragma: export
#include "kgmp/sync.h"       // IWYU pragma: export
#include "kgmp/telemetry.h"  // IWYU pragma: export
#include "kgmp/time.h"       // IWYU pragma: export
