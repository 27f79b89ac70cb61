// Precompiled header for the areas that use LibTorch. Keep it to LibTorch itself:
// project headers change often and would invalidate it.
#pragma once
#include <torch/torch.h>
