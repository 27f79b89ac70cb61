// Builds the shared precompiled header (src/pch/torch_pch.h) once for every LibTorch area.
#include <torch/torch.h>
