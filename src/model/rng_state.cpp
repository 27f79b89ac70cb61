// The generator state a forward draws from (LoRA dropout), saved and restored for checkpointing and exact resume.
#include "medllm/model/rng_state.h"

#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

namespace medllm::model {
namespace {

at::Generator device_generator(int index) {
    return at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
}

}  // namespace

RngState RngState::capture(const at::Tensor& like) {
    RngState state;
    {
        auto gen = at::detail::getDefaultCPUGenerator();
        const std::lock_guard<std::mutex> lock(gen.mutex());
        state.cpu = gen.get_state();
    }
    if (like.is_cuda()) {
        state.device_index = like.device().index();
        auto gen           = device_generator(state.device_index);
        const std::lock_guard<std::mutex> lock(gen.mutex());
        state.device = gen.get_state();
    }
    return state;
}

void RngState::restore() const {
    {
        auto gen = at::detail::getDefaultCPUGenerator();
        const std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(cpu);
    }
    if (device.defined()) {
        auto gen = device_generator(device_index);
        const std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(device);
    }
}

}  // namespace medllm::model
