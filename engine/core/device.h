// Devices. Every backend owns one slot in each dispatch table (see dispatch.h), indexed by
// DeviceType, so adding a backend adds kernels, not branches in op code.
#pragma once

#include <cstdint>
#include <string>

namespace mt {

enum class DeviceType : uint8_t { CPU = 0, CUDA = 1 };
inline constexpr int kNumDeviceTypes = 2;

struct Device {
  DeviceType type = DeviceType::CPU;
  int16_t index = 0;

  constexpr bool is_cpu() const { return type == DeviceType::CPU; }
  constexpr bool is_cuda() const { return type == DeviceType::CUDA; }
  friend constexpr bool operator==(Device a, Device b) {
    return a.type == b.type && a.index == b.index;
  }
  std::string str() const {
    return type == DeviceType::CPU ? std::string("cpu") : "cuda:" + std::to_string(index);
  }
};

inline constexpr Device kCPU{DeviceType::CPU, 0};
inline constexpr Device cuda(int index = 0) { return Device{DeviceType::CUDA, int16_t(index)}; }

}  // namespace mt
