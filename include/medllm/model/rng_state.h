// The random-number state a forward draws from (dropout, e.g. LoRA dropout): LibTorch's default CPU generator,
// plus the default generator of one CUDA device. Gradient checkpointing replays it in backward (qwen2.cpp), and a
// resumed training run restores it so its dropout masks continue where the interrupted run stopped.
#pragma once

#include <ATen/core/Tensor.h>

namespace medllm::model {

struct RngState {
    at::Tensor cpu;     // the CPU generator's state (uint8)
    at::Tensor device;  // the CUDA generator's state, undefined when none was captured
    int device_index = -1;

    // The current state: the CPU generator's, plus the generator of `like`'s CUDA device when it is on one.
    static RngState capture(const at::Tensor& like);
    // Sets the generators back to this state.
    void restore() const;
};

}  // namespace medllm::model
