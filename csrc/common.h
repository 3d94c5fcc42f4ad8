// Shared helpers for the compiled cores. Framework-agnostic: raw pointers in, results out.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace micro_fast {

// Errors raised by kernels surface in Python as ValueError via the bindings.
struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

#define MF_CHECK(cond, msg)                                   \
  do {                                                        \
    if (!(cond)) throw ::micro_fast::InvalidArgument(msg);    \
  } while (0)

}  // namespace micro_fast
