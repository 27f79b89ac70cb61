// The one file that includes c10d (training.md §6): TCPStore rendezvous hosted by rank 0, ProcessGroupGloo on CPU,
// ProcessGroupNCCL on CUDA. Gloo's headers are Debian's libgloo-dev, whose layout differs from the gloo compiled
// into the wheel: only ProcessGroupGloo's public API is used here, never a gloo field, and Debian's libgloo is
// never linked.
#include "medllm/dist/distributed.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/cuda.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#if defined(USE_C10D_NCCL)
#if !defined(MEDLLM_C10D_NCCL)
#error "LibTorch has NCCL (USE_C10D_NCCL) but nccl.h was not found: CMake looks in the wheel's nvidia/nccl/include"
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "medllm/core/error.h"

namespace medllm::dist {

// ---------------------------------------------------------------- launch

namespace {

std::optional<int64_t> env_int(const std::function<const char*(const char*)>& getenv, const char* name) {
    const char* v = getenv(name);
    if (!v || !*v) return std::nullopt;
    errno             = 0;
    char* end         = nullptr;
    const long long x = std::strtoll(v, &end, 10);
    // Slurm writes counts like "4(x2)": the leading number is what is meant.
    if (end == v || errno == ERANGE || (*end != '\0' && *end != '(' && *end != ','))
        throw UsageError(std::string("environment variable ") + name + ": expected an integer, got '" + v + "'");
    return static_cast<int64_t>(x);
}

std::string env_str(const std::function<const char*(const char*)>& getenv, const char* name) {
    const char* v = getenv(name);
    return v ? std::string(v) : std::string();
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
    std::string out;
    size_t i = 0;
    while (i < nodelist.size() && nodelist[i] != ',') {
        if (nodelist[i] == '[') {
            const size_t close = nodelist.find(']', i);
            if (close == std::string::npos)
                throw UsageError("SLURM_JOB_NODELIST: unbalanced '[' in '" + nodelist + "'");
            std::string inner = nodelist.substr(i + 1, close - i - 1);
            inner             = inner.substr(0, inner.find(','));
            out += inner.substr(0, inner.find('-'));
            i = close + 1;
        } else {
            out += nodelist[i++];
        }
    }
    return out;
}

Launch resolve_launch(const LaunchFlags& flags, const std::function<const char*(const char*)>& getenv_in) {
    const std::function<const char*(const char*)> getenv =
        getenv_in ? getenv_in : [](const char* n) -> const char* { return std::getenv(n); };
    Launch l;
    // Half a launch environment (RANK without WORLD_SIZE, or the reverse; SLURM_PROCID without SLURM_NTASKS) is a
    // broken launcher or a leftover export: running as one process would silently train or write the wrong share.
    // (SLURM_NTASKS alone is an salloc shell: one process.)
    for (const auto& [a, b] : {std::pair<const char*, const char*>{"RANK", "WORLD_SIZE"},
                               std::pair<const char*, const char*>{"WORLD_SIZE", "RANK"},
                               std::pair<const char*, const char*>{"SLURM_PROCID", "SLURM_NTASKS"}})
        if (getenv(a) && !getenv(b) && !(flags.rank || flags.world_size))
            throw UsageError(std::string(a) + " is set but " + b +
                             " is not: set both (as torchrun / srun do), or unset " + a + " to run one process");
    if (getenv("RANK") && getenv("WORLD_SIZE")) {
        l.source           = "torchrun environment";
        l.rank             = *env_int(getenv, "RANK");
        l.world_size       = *env_int(getenv, "WORLD_SIZE");
        l.local_rank       = env_int(getenv, "LOCAL_RANK").value_or(0);
        l.local_world_size = env_int(getenv, "LOCAL_WORLD_SIZE").value_or(l.world_size);
    } else if (getenv("SLURM_PROCID") && getenv("SLURM_NTASKS")) {
        l.source     = "Slurm environment";
        l.rank       = *env_int(getenv, "SLURM_PROCID");
        l.world_size = *env_int(getenv, "SLURM_NTASKS");
        l.local_rank = env_int(getenv, "SLURM_LOCALID").value_or(0);
        l.local_world_size =
            env_int(getenv, "SLURM_NTASKS_PER_NODE").value_or(env_int(getenv, "SLURM_TASKS_PER_NODE").value_or(1));
        std::string nodes = env_str(getenv, "SLURM_JOB_NODELIST");
        if (nodes.empty()) nodes = env_str(getenv, "SLURM_NODELIST");
        if (!nodes.empty()) l.master_addr = first_slurm_host(nodes);
    }
    if (const auto a = env_str(getenv, "MASTER_ADDR"); !a.empty()) l.master_addr = a;
    if (const auto p = env_int(getenv, "MASTER_PORT")) l.master_port = *p;
    if (flags.rank || flags.world_size || flags.local_rank) l.source = "flags";
    if (flags.rank) l.rank = *flags.rank;
    if (flags.world_size) {
        l.world_size = *flags.world_size;
        if (!getenv("LOCAL_WORLD_SIZE") && !getenv("SLURM_NTASKS_PER_NODE")) l.local_world_size = l.world_size;
    }
    if (flags.local_rank) l.local_rank = *flags.local_rank;
    if (!flags.master_addr.empty()) l.master_addr = flags.master_addr;
    if (flags.master_port != 0) l.master_port = flags.master_port;
    l.backend = flags.backend;
    if (!(flags.timeout_s > 0)) throw UsageError("--dist-timeout: must be > 0 seconds");
    l.timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.timeout_s * 1000.0));

    const std::string from = l.source == "flags" ? "--rank/--world-size" : l.source;
    if (l.world_size < 1)
        throw UsageError("world size " + std::to_string(l.world_size) + " (" + from + ") must be >= 1");
    if (l.rank < 0 || l.rank >= l.world_size)
        throw UsageError("rank " + std::to_string(l.rank) + " (" + from + ") is not in [0, world size " +
                         std::to_string(l.world_size) + ")");
    if (l.local_rank < 0) throw UsageError("local rank " + std::to_string(l.local_rank) + " must be >= 0");
    if (l.master_port < 1 || l.master_port > 65535)
        throw UsageError("master port " + std::to_string(l.master_port) + " is not in [1, 65535]");
    if (l.backend != "auto" && l.backend != "gloo" && l.backend != "nccl")
        throw UsageError("--backend: expected auto, gloo or nccl, got '" + l.backend + "'");
    return l;
}

at::Device resolve_device(const std::string& name, int64_t local_rank) {
    const bool cuda = torch::cuda::is_available();
    at::Device d(at::kCPU);
    if (name == "auto") {
        if (!cuda) return d;
        d = at::Device(at::kCUDA, static_cast<at::DeviceIndex>(local_rank));
    } else if (name == "cuda") {
        d = at::Device(at::kCUDA, static_cast<at::DeviceIndex>(local_rank));
    } else {
        try {
            d = at::Device(name);
        } catch (const std::exception&) {
            throw UsageError("training.device: expected auto, cpu, cuda or cuda:N, got '" + name + "'");
        }
    }
    if (d.is_cuda()) {
        if (!cuda) throw UsageError("training.device: " + name + " requested but no CUDA device is available");
        const auto n = static_cast<int64_t>(torch::cuda::device_count());
        if (d.index() >= n)
            throw UsageError("device " + name + " of this process is cuda:" + std::to_string(d.index()) +
                             " (local rank " + std::to_string(local_rank) + ") but this machine has " +
                             std::to_string(n) + " CUDA device(s): start at most that many processes per node");
    }
    return d;
}

// ---------------------------------------------------------------- the group

struct Distributed::Impl {
    c10::intrusive_ptr<c10d::Store> store;  // the PrefixStore over the TCPStore
    c10::intrusive_ptr<c10d::Backend> pg;
    std::string backend = "none";
    int64_t waits       = 0;  // wait_for_all calls so far (their keys)
    // The heartbeat: its own store connection, so a slow collective never delays it.
    std::thread heartbeat;
    std::atomic<bool> stop{false};

    void start_heartbeat(const Launch& launch) {
        c10d::TCPStoreOptions so;
        so.port        = static_cast<uint16_t>(launch.master_port);
        so.isServer    = false;
        so.waitWorkers = false;
        so.timeout     = std::min<std::chrono::milliseconds>(launch.timeout, std::chrono::milliseconds(30000));
        c10::intrusive_ptr<c10d::Store> beat_store = c10::make_intrusive<c10d::PrefixStore>(
            "medllm", c10::make_intrusive<c10d::TCPStore>(launch.master_addr, so));
        const std::string key = "heartbeat/" + std::to_string(launch.rank);
        heartbeat             = std::thread([this, beat_store, key] {
            try {
                while (!stop.load()) {
                    beat_store->add(key, 1);
                    for (int i = 0; i < 10 && !stop.load(); ++i)
                        std::this_thread::sleep_for(std::chrono::milliseconds(100));
                }
            } catch (const std::exception&) {  // the store is gone (rank 0 exited): nothing left to tell
            }
        });
    }
};

Distributed::~Distributed() {
    if (!impl_) return;
    impl_->stop = true;
    if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
    try {
        if (impl_->pg) impl_->pg->shutdown();
    } catch (const std::exception&) {
    }
    impl_->pg.reset();
    impl_->store.reset();
}

std::string Distributed::backend() const {
    return impl_ ? impl_->backend : "none";
}

std::shared_ptr<Distributed> Distributed::single(const std::string& device_setting) {
    std::shared_ptr<Distributed> d(new Distributed());
    d->device_ = resolve_device(device_setting, 0);
    return d;
}

namespace {

std::string rank_list(const std::vector<int64_t>& ranks) {
    std::string s;
    for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
    return s;
}

bool is_loopback(const std::string& host) {
    return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

std::shared_ptr<Distributed> Distributed::create(const Launch& launch, const std::string& device_setting) {
    // One process needs no group; an explicit --backend still builds one (a device check of NCCL on one GPU).
    if (launch.world_size == 1 && launch.backend == "auto") {
        auto d     = single("auto");
        d->launch_ = launch;
        d->device_ = resolve_device(device_setting, launch.local_rank);
        return d;
    }
    std::shared_ptr<Distributed> d(new Distributed());
    d->launch_           = launch;
    d->device_           = resolve_device(device_setting, launch.local_rank);
    std::string backend  = launch.backend == "auto" ? (d->device_.is_cuda() ? "nccl" : "gloo") : launch.backend;
    const std::string at = launch.master_addr + ":" + std::to_string(launch.master_port);
    const double secs    = static_cast<double>(launch.timeout.count()) / 1000.0;
    if (backend == "nccl" && !d->device_.is_cuda())
        throw UsageError("--backend nccl needs a CUDA device (training.device is " + d->device_.str() + ")");
#if !defined(MEDLLM_C10D_NCCL)
    if (backend == "nccl") throw UsageError("--backend nccl: this build of medllm has no NCCL (a CPU LibTorch)");
#endif

    d->impl_          = std::make_unique<Impl>();
    d->impl_->backend = backend;
    c10d::TCPStoreOptions so;
    so.port        = static_cast<uint16_t>(launch.master_port);
    so.isServer    = launch.rank == 0;
    so.numWorkers  = static_cast<size_t>(launch.world_size);
    so.waitWorkers = false;  // the roll-in below names the ranks that did not come
    so.timeout     = launch.timeout;
    c10::intrusive_ptr<c10d::Store> tcp;
    try {
        tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, so);
    } catch (const std::exception& e) {
        std::string why = e.what();
        why             = why.substr(0, why.find('\n'));
        if (launch.rank == 0) throw Error("rank 0 cannot host the rendezvous at " + at + " (" + why + ")");
        throw Error("rank " + std::to_string(launch.rank) + " could not reach the rendezvous at " + at + " within " +
                    std::to_string(static_cast<int64_t>(secs)) + " s: rank 0 hosts it (is it running, is " +
                    "MASTER_ADDR/--master-addr right?) (" + why + ")");
    }
    d->impl_->store = c10::make_intrusive<c10d::PrefixStore>("medllm", tcp);
    auto& store     = *d->impl_->store;

    // Roll-in: every rank announces itself and waits for the others, so a timeout can say who is missing. Ranks
    // launched with different world sizes would wait for ranks that never come (or start a group of the wrong size):
    // each rank compares its world size with rank 0's, and one that differs leaves a note every rank reports.
    // A rank other than 0 announces itself only once it has seen rank 0's world size and found it equal to its own.
    const std::string mine = std::to_string(launch.world_size);
    if (launch.rank == 0) {
        store.set("world_size", mine);
        store.set("arrived/0", mine);
    }
    const auto start = std::chrono::steady_clock::now(), deadline = start + launch.timeout;
    auto next_note = start + std::chrono::seconds(30);
    auto read      = [&](const std::string& key) {
        const auto v = store.get(key);
        return std::string(v.begin(), v.end());
    };
    auto disagreement = [&](const std::string& note) {
        return "rendezvous at " + at + ": " + note +
               " (every process needs the same --world-size / WORLD_SIZE / SLURM_NTASKS)";
    };
    bool announced = launch.rank == 0;
    for (;;) {
        if (!announced && store.check({"world_size"})) {
            const std::string theirs = read("world_size");
            if (theirs != mine) {
                const std::string note = "rank " + std::to_string(launch.rank) + " was launched with world size " +
                                         mine + ", rank 0 with " + theirs;
                store.set("disagree", note);
                throw Error(disagreement(note));
            }
            store.set("arrived/" + std::to_string(launch.rank), mine);
            announced = true;
        }
        if (store.check({"disagree"})) throw Error(disagreement(read("disagree")));
        std::vector<int64_t> missing;
        for (int64_t r = 0; r < launch.world_size; ++r)
            if (!store.check({"arrived/" + std::to_string(r)})) missing.push_back(r);
        if (missing.empty()) break;
        if (std::chrono::steady_clock::now() > next_note) {  // a long wait says what it waits for
            next_note += std::chrono::seconds(30);
            spdlog::info("rendezvous at {}: waiting for rank(s) {} of {} ({:.0f} of {:.0f} s)", at, rank_list(missing),
                         launch.world_size,
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), secs);
        }
        if (std::chrono::steady_clock::now() > deadline)
            throw Error("rendezvous at " + at + " timed out after " + std::to_string(static_cast<int64_t>(secs)) +
                        " s: rank(s) " + rank_list(missing) + " of " + std::to_string(launch.world_size) +
                        " did not arrive (--dist-timeout sets the limit)");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }

    if (backend == "gloo") {
        auto opts = c10d::ProcessGroupGloo::Options::create(launch.timeout);
        if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
        else if (is_loopback(launch.master_addr))
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(launch.master_addr));
        else
            opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        d->impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(d->impl_->store, static_cast<int>(launch.rank),
                                                                   static_cast<int>(launch.world_size), opts);
    } else {
#if defined(MEDLLM_C10D_NCCL)
        c10::cuda::set_device(d->device_.index());
        auto opts     = c10d::ProcessGroupNCCL::Options::create();
        opts->timeout = launch.timeout;
        d->impl_->pg  = c10::make_intrusive<c10d::ProcessGroupNCCL>(d->impl_->store, static_cast<int>(launch.rank),
                                                                   static_cast<int>(launch.world_size), opts);
#endif
    }
    d->impl_->start_heartbeat(launch);
    spdlog::info("distributed: rank {}/{} (local rank {}), {} over {}, device {} ({})", launch.rank, launch.world_size,
                 launch.local_rank, backend, at, d->device_.str(), launch.source);
    return d;
}

void Distributed::fail(const std::string& what, const std::exception& e) {
    std::string why      = e.what();
    why                  = why.substr(0, why.find('\n'));
    const std::string at = launch_.master_addr + ":" + std::to_string(launch_.master_port);
    // Roll call: the survivors answer within a grace period; whoever does not is named. Rank 0 hosts the store,
    // so when the store is unreachable it is rank 0 that is gone.
    const auto grace = std::min<std::chrono::milliseconds>(launch_.timeout, std::chrono::milliseconds(5000));
    std::vector<int64_t> silent;
    std::string failures;
    try {
        auto& store = *impl_->store;
        store.setTimeout(grace);
        store.set("rollcall/" + std::to_string(rank()), "1");
        const auto deadline = std::chrono::steady_clock::now() + grace;
        for (;;) {
            silent.clear();
            for (int64_t r = 0; r < world_size(); ++r)
                if (r != rank() && !store.check({"rollcall/" + std::to_string(r)})) silent.push_back(r);
            if (silent.empty() || std::chrono::steady_clock::now() > deadline) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        for (int64_t r = 0; r < world_size(); ++r) {
            const std::string key = "failed/" + std::to_string(r);
            if (r != rank() && store.check({key})) {
                const auto v = store.get(key);
                failures += "; rank " + std::to_string(r) + " failed: " + std::string(v.begin(), v.end());
            }
        }
    } catch (const std::exception&) {
        throw Error(what + " failed on rank " + std::to_string(rank()) + ": lost rank 0 (it hosts the store at " + at +
                    " and no longer answers) (" + why + ")");
    }
    if (!silent.empty())
        throw Error(what + " failed on rank " + std::to_string(rank()) + ": lost rank(s) " + rank_list(silent) +
                    " of " + std::to_string(world_size()) + " (no answer within " +
                    std::to_string(grace.count() / 1000) + " s)" + failures + " (" + why + ")");
    throw Error(what + " failed on rank " + std::to_string(rank()) + failures + " (" + why + ")");
}

void Distributed::report_failure(const std::string& message) noexcept {
    if (!impl_) return;
    try {
        impl_->store->setTimeout(std::chrono::milliseconds(2000));
        impl_->store->set("failed/" + std::to_string(rank()), message.substr(0, 300));
    } catch (const std::exception&) {
    }
}

namespace {

// Runs `op` over buckets of `tensors` flattened per dtype; `op` gets the flat buffers and returns after they
// are reduced. Tensors on CUDA under Gloo travel through CPU.
template <class Op>
void bucketed(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes, bool stage_on_cpu, Op&& op) {
    std::map<at::ScalarType, std::vector<std::vector<at::Tensor>>> groups;
    std::map<at::ScalarType, int64_t> filled;
    for (const auto& t : tensors) {
        if (!t.defined()) continue;
        auto& g           = groups[t.scalar_type()];
        int64_t& bytes    = filled[t.scalar_type()];
        const int64_t add = t.numel() * static_cast<int64_t>(t.element_size());
        if (g.empty() || (bytes + add > bucket_bytes && !g.back().empty())) {
            g.emplace_back();
            bytes = 0;
        }
        g.back().push_back(t);
        bytes += add;
    }
    std::vector<std::vector<at::Tensor>> buckets;
    for (auto& [dtype, g] : groups)
        for (auto& b : g) buckets.push_back(std::move(b));
    std::vector<at::Tensor> flats;
    for (const auto& b : buckets) {
        std::vector<at::Tensor> parts;
        for (const auto& t : b) parts.push_back(t.reshape({-1}));
        at::Tensor flat = at::cat(parts);
        if (stage_on_cpu && flat.is_cuda()) flat = flat.cpu();
        flats.push_back(flat);
    }
    op(flats);
    for (size_t i = 0; i < buckets.size(); ++i) {
        int64_t off = 0;
        for (const auto& t : buckets[i]) {
            const int64_t n = t.numel();
            t.copy_(flats[i].slice(0, off, off + n).view(t.sizes()));
            off += n;
        }
    }
}

}  // namespace

void Distributed::all_reduce(const std::vector<at::Tensor>& tensors, Reduce op, int64_t bucket_bytes) {
    if (!impl_) return;
    const auto t0 = std::chrono::steady_clock::now();
    try {
        bucketed(tensors, bucket_bytes, impl_->backend == "gloo", [&](std::vector<at::Tensor>& flats) {
            c10d::AllreduceOptions o;
            o.reduceOp = op == Reduce::max ? c10d::ReduceOp(c10d::ReduceOp::MAX) : c10d::ReduceOp(c10d::ReduceOp::SUM);
            std::vector<c10::intrusive_ptr<c10d::Work>> works;
            std::vector<std::vector<at::Tensor>> args;
            args.reserve(flats.size());
            for (auto& f : flats) {
                args.push_back({f});
                works.push_back(impl_->pg->allreduce(args.back(), o));
            }
            for (auto& w : works) w->wait();
            if (op == Reduce::mean)
                for (auto& f : flats)
                    if (at::isFloatingType(f.scalar_type())) f.div_(static_cast<double>(world_size()));
        });
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        fail("all_reduce", e);
    }
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<double> Distributed::all_reduce_scalars(std::vector<double> values, Reduce op) {
    if (!impl_ || values.empty()) return values;
    at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble));
    if (impl_->backend == "nccl") t = t.to(device_);
    const double saved = comm_seconds_;
    all_reduce({t}, op);
    comm_seconds_   = saved;  // logging traffic is not gradient traffic
    t               = t.cpu().contiguous();
    const double* p = t.data_ptr<double>();
    return std::vector<double>(p, p + values.size());
}

std::vector<double> Distributed::all_gather(double value) {
    std::vector<double> v(static_cast<size_t>(world_size()), 0.0);
    v[static_cast<size_t>(rank())] = value;
    return all_reduce_scalars(std::move(v), Reduce::sum);
}

void Distributed::broadcast(const std::vector<at::Tensor>& tensors, int64_t root) {
    if (!impl_) return;
    const auto t0 = std::chrono::steady_clock::now();
    try {
        bucketed(tensors, 64 << 20, impl_->backend == "gloo", [&](std::vector<at::Tensor>& flats) {
            c10d::BroadcastOptions o;
            o.rootRank = root;
            for (auto& f : flats) {
                std::vector<at::Tensor> arg{f};
                impl_->pg->broadcast(arg, o)->wait();
            }
        });
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        fail("broadcast", e);
    }
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Distributed::barrier(std::optional<std::chrono::milliseconds> timeout) {
    if (!impl_) return;
    try {
        if (impl_->backend == "gloo") {
            c10d::BarrierOptions o;
            if (timeout) o.timeout = *timeout;
            impl_->pg->barrier(o)->wait();
        } else {
            c10d::AllreduceOptions o;
            if (timeout) o.timeout = *timeout;
            std::vector<at::Tensor> arg{at::zeros({1}, at::TensorOptions().device(device_))};
            impl_->pg->allreduce(arg, o)->wait();
        }
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        fail("barrier", e);
    }
}

void Distributed::wait_for_all(const std::string& what) {
    if (!impl_) return;
    using clock           = std::chrono::steady_clock;
    const std::string at  = launch_.master_addr + ":" + std::to_string(launch_.master_port);
    const std::string tag = "wait/" + std::to_string(impl_->waits++) + "/";
    const auto W          = static_cast<size_t>(world_size());
    std::vector<int64_t> beats(W, -1);
    std::vector<clock::time_point> beat_seen(W, clock::now());
    try {
        auto& store = *impl_->store;
        // Until every rank has set `prefix + rank`, watching the missing ones' failure reports and heartbeats.
        const auto start = clock::now();
        auto next_note   = start + std::chrono::seconds(60);
        auto await_all   = [&](const std::string& prefix) {
            for (;;) {
                std::vector<int64_t> missing;
                for (int64_t r = 0; r < world_size(); ++r)
                    if (!store.check({prefix + std::to_string(r)})) missing.push_back(r);
                if (missing.empty()) return;
                if (clock::now() > next_note) {  // the others' shares may take minutes more: say so
                    next_note += std::chrono::seconds(60);
                    spdlog::info("{}: rank {} waits for rank(s) {} of {} (alive; {:.0f} s so far)", what, rank(),
                                   rank_list(missing), world_size(),
                                   std::chrono::duration<double>(clock::now() - start).count());
                }
                for (int64_t r : missing) {
                    const std::string failed = "failed/" + std::to_string(r);
                    if (store.check({failed})) {
                        const auto v = store.get(failed);
                        throw Error(what + ": rank " + std::to_string(r) + " of " + std::to_string(world_size()) +
                                      " failed: " + std::string(v.begin(), v.end()));
                    }
                    const int64_t beat = store.add("heartbeat/" + std::to_string(r), 0);
                    const auto now     = clock::now();
                    if (beat != beats[static_cast<size_t>(r)]) {
                        beats[static_cast<size_t>(r)]     = beat;
                        beat_seen[static_cast<size_t>(r)] = now;
                    } else if (now - beat_seen[static_cast<size_t>(r)] > launch_.timeout) {
                        throw Error(what + " on rank " + std::to_string(rank()) + ": lost rank " + std::to_string(r) +
                                      " of " + std::to_string(world_size()) + " (no heartbeat for " +
                                      std::to_string(launch_.timeout.count() / 1000) +
                                      " s; --dist-timeout sets the limit)");
                    }
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        };
        store.set(tag + std::to_string(rank()), "1");
        await_all(tag);
        // Rank 0 hosts the store: it leaves only once every rank has seen the others arrive. Otherwise rank 0,
        // arriving last, returns at once and may exit (the store with it) while another rank is still between two
        // polls, and that rank fails with "lost rank 0" after a wait that had succeeded.
        store.set(tag + "seen/" + std::to_string(rank()), "1");
        if (is_main()) await_all(tag + "seen/");
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        std::string why = e.what();
        why             = why.substr(0, why.find('\n'));
        throw Error(what + " on rank " + std::to_string(rank()) + ": lost rank 0 (it hosts the store at " + at +
                    " and no longer answers) (" + why + ")");
    }
}

// ---------------------------------------------------------------- gradient sync (DDP's reducer, for LoRA)

struct Distributed::GradientSync::State {
    struct Bucket {
        at::Tensor flat;              // the reduce device's buffer (CPU under Gloo), only while a step needs it
        std::vector<at::Tensor> arg;  // {flat}, kept alive while its collective runs
        std::vector<size_t> members;  // parameter indices
        size_t pending = 0;           // members not yet copied in this step
        int64_t numel  = 0;
        at::TensorOptions options;
        c10::intrusive_ptr<c10d::Work> work;
    };
    c10d::Backend* pg = nullptr;
    std::vector<at::Tensor> params;
    std::vector<Bucket> buckets;
    std::vector<size_t> bucket_of;
    std::vector<int64_t> offset_of;
    std::vector<char> ready;
    // The gradient accumulators, held: a parameter keeps only a weak reference, so without these each backward
    // graph would get a new accumulator without the hook.
    std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
    std::vector<uintptr_t> hook_keys;
    size_t next                 = 0;  // the next bucket to start: buckets start in index order on every rank
    bool armed                  = false;
    bool in_backward            = false;
    double scale                = 1.0;
    int64_t started_in_backward = 0;
    std::mutex mu;
    std::exception_ptr error;  // a failed launch inside backward, rethrown by finish()
    std::string twice;         // a parameter whose gradient came twice in one backward

    // The buffers live from arm() (overlap) or finish() to the end of finish(), as the transient flat copies of
    // Distributed::all_reduce: without overlap they never exist during backward, the activation peak.
    void allocate() {
        for (auto& b : buckets)
            if (!b.flat.defined()) {
                b.flat = at::empty({b.numel}, b.options);  // every element is written by copy_in
                b.arg  = {b.flat};
            }
    }
    void release() {
        for (auto& b : buckets) {
            b.arg.clear();
            b.flat = at::Tensor();
        }
    }
    at::Tensor view_of(size_t i) {
        const auto& p = params[i];
        return buckets[bucket_of[i]].flat.narrow(0, offset_of[i], p.numel()).view(p.sizes());
    }
    void copy_in(size_t i) {
        at::NoGradGuard no_grad;
        at::Tensor v       = view_of(i);
        const at::Tensor g = params[i].grad();
        if (!g.defined()) {
            v.zero_();
            return;
        }
        v.copy_(g);
        if (scale != 1.0) v.mul_(scale);  // the same multiply as grad.mul_(scale): the same bits
    }
    void start_ready_buckets() {
        c10d::AllreduceOptions o;
        o.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
        while (next < buckets.size() && buckets[next].pending == 0) {
            auto& b = buckets[next++];
            b.work  = pg->allreduce(b.arg, o);
            if (in_backward) ++started_in_backward;
        }
    }
    void mark_ready(size_t i) {
        std::lock_guard<std::mutex> lock(mu);
        if (!armed || error) return;
        if (ready[i]) {
            twice = std::to_string(i);
            return;
        }
        try {
            copy_in(i);
            ready[i] = 1;
            --buckets[bucket_of[i]].pending;
            start_ready_buckets();
        } catch (...) {
            error = std::current_exception();
        }
    }
};

namespace {
struct GradReadyHook : torch::autograd::FunctionPostHook {
    Distributed::GradientSync::State* state;
    size_t index;
    GradReadyHook(Distributed::GradientSync::State* s, size_t i) : state(s), index(i) {}
    torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                              const torch::autograd::variable_list& /*inputs*/) override {
        state->mark_ready(index);  // AccumulateGrad has added this backward's gradient into .grad
        return outputs;
    }
};
}  // namespace

Distributed::GradientSync::GradientSync(Distributed& dist, std::vector<at::Tensor> params, bool overlap,
                                        int64_t bucket_bytes)
    : dist_(dist), overlap_(overlap && dist.impl_ != nullptr), state_(std::make_unique<State>()) {
    auto& st  = *state_;
    st.params = std::move(params);
    if (!dist.impl_) return;  // one process: nothing to reduce
    st.pg                   = dist.impl_->pg.get();
    const bool stage_on_cpu = dist.impl_->backend == "gloo";
    const size_t n          = st.params.size();
    st.bucket_of.assign(n, 0);
    st.offset_of.assign(n, 0);
    st.ready.assign(n, 0);
    // Reverse registration order, a bucket per dtype run, at most bucket_bytes (a larger tensor gets its own).
    std::map<at::ScalarType, size_t> open;  // dtype -> the bucket being filled
    std::vector<int64_t> bytes, elems;
    std::vector<at::TensorOptions> opts;
    for (size_t k = n; k-- > 0;) {
        const auto& p = st.params[k];
        TORCH_CHECK(p.defined() && p.requires_grad() && p.is_leaf(), "GradientSync: parameter ", k,
                    " is not a leaf that requires grad");
        const int64_t add = p.numel() * static_cast<int64_t>(p.element_size());
        auto it           = open.find(p.scalar_type());
        if (it == open.end() || (bytes[it->second] + add > bucket_bytes && bytes[it->second] > 0)) {
            st.buckets.emplace_back();
            bytes.push_back(0);
            elems.push_back(0);
            opts.push_back(p.options().device(stage_on_cpu ? at::Device(at::kCPU) : p.device()));
            it = open.insert_or_assign(p.scalar_type(), st.buckets.size() - 1).first;
        }
        const size_t b = it->second;
        st.buckets[b].members.push_back(k);
        st.bucket_of[k] = b;
        st.offset_of[k] = elems[b];
        elems[b] += p.numel();
        bytes[b] += add;
    }
    for (size_t b = 0; b < st.buckets.size(); ++b) {
        st.buckets[b].numel   = elems[b];
        st.buckets[b].options = opts[b];
        st.buckets[b].pending = st.buckets[b].members.size();
    }
    if (!overlap_) return;
    for (size_t k = 0; k < n; ++k) {
        auto acc = torch::autograd::impl::grad_accumulator(st.params[k]);
        TORCH_CHECK(acc, "GradientSync: parameter ", k, " has no gradient accumulator");
        st.hook_keys.push_back(acc->add_post_hook(std::make_unique<GradReadyHook>(&st, k)));
        st.accumulators.push_back(std::move(acc));
    }
}

Distributed::GradientSync::~GradientSync() {
    auto& st = *state_;
    for (size_t k = 0; k < st.accumulators.size(); ++k) st.accumulators[k]->del_post_hook(st.hook_keys[k]);
}

int64_t Distributed::GradientSync::num_buckets() const {
    return static_cast<int64_t>(state_->buckets.size());
}

void Distributed::GradientSync::arm(double scale) {
    auto& st = *state_;
    std::lock_guard<std::mutex> lock(st.mu);
    st.scale       = scale;
    st.armed       = overlap_;
    st.in_backward = overlap_;
    if (overlap_) st.allocate();
}

std::vector<double> Distributed::GradientSync::finish(const std::vector<double>& scalars) {
    auto& st                = *state_;
    std::vector<double> out = scalars;
    if (!dist_.impl_) return out;
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(st.mu);
    st.armed             = false;
    st.in_backward       = false;
    started_in_backward_ = st.started_in_backward;
    try {
        if (!st.twice.empty())
            throw Error("gradient all-reduce: the gradient of adapter parameter " + st.twice +
                        " was produced twice in one backward, so it was sent before it was final "
                        "(training.overlap_allreduce: false avoids this)");
        if (st.error) std::rethrow_exception(st.error);
        st.allocate();
        // Buckets in index order: the ones the hooks did not complete (all of them without overlap).
        for (size_t b = st.next; b < st.buckets.size(); ++b) {
            for (size_t k : st.buckets[b].members)
                if (!st.ready[k]) {
                    st.copy_in(k);
                    st.ready[k] = 1;
                }
            st.buckets[b].pending = 0;
        }
        st.start_ready_buckets();
        at::Tensor sc;
        c10::intrusive_ptr<c10d::Work> scalar_work;
        std::vector<at::Tensor> scalar_arg;
        if (!scalars.empty()) {
            sc = at::tensor(scalars, at::TensorOptions().dtype(at::kDouble));
            if (dist_.impl_->backend == "nccl") sc = sc.to(dist_.device_);
            scalar_arg = {sc};
            c10d::AllreduceOptions o;
            o.reduceOp  = c10d::ReduceOp(c10d::ReduceOp::SUM);
            scalar_work = st.pg->allreduce(scalar_arg, o);
        }
        for (auto& b : st.buckets) {
            b.work->wait();
            b.work.reset();
        }
        if (scalar_work) {
            scalar_work->wait();
            const at::Tensor c = sc.cpu().contiguous();
            out.assign(c.data_ptr<double>(), c.data_ptr<double>() + scalars.size());
        }
        at::NoGradGuard no_grad;
        for (size_t k = 0; k < st.params.size(); ++k) {
            auto& p = st.params[k];
            if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
            p.mutable_grad().copy_(st.view_of(k));
        }
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        lock.unlock();
        dist_.fail("all_reduce", e);
    }
    st.release();
    std::fill(st.ready.begin(), st.ready.end(), 0);
    for (auto& b : st.buckets) b.pending = b.members.size();
    st.next                = 0;
    st.scale               = 1.0;
    st.started_in_backward = 0;
    dist_.comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

std::unique_ptr<Distributed::GradientSync> make_gradient_sync(
    Distributed& dist, const std::vector<std::pair<std::string, at::Tensor>>& params, const std::string& overlap,
    double bucket_mb) {
    if (dist.backend() == "none") return nullptr;  // one process without a group (a named --backend has one)
    if (overlap != "true" && overlap != "false" && overlap != "auto")
        throw UsageError("training.overlap_allreduce: expected auto, true or false, got '" + overlap + "'");
    std::vector<at::Tensor> tensors;
    for (const auto& p : params) tensors.push_back(p.second);
    const int64_t bucket_bytes = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0));
    return std::make_unique<Distributed::GradientSync>(dist, std::move(tensors), overlap == "true", bucket_bytes);
}

double Distributed::take_comm_seconds() {
    const double s = comm_seconds_;
    comm_seconds_  = 0;
    return s;
}

}  // namespace medllm::dist
