#include "directport/vulkan/vulkan.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

namespace dp::vk {
namespace {

constexpr std::uint32_t kApi = VK_MAKE_API_VERSION(0, 1, 2, 0);
const char* const kDeviceExtensions[] = {VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME,
                                         VK_KHR_EXTERNAL_SEMAPHORE_FD_EXTENSION_NAME};

const char* result_name(VkResult rc) {
  switch (rc) {
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_INVALID_EXTERNAL_HANDLE: return "VK_ERROR_INVALID_EXTERNAL_HANDLE";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    default: return "VkResult";
  }
}

std::string format_uuid(const std::uint8_t* b) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return buf;
}

// The loader, opened once and never closed (drivers keep threads and atexit handlers).
struct Loader {
  void* lib = nullptr;
  std::string error;
  PFN_vkGetInstanceProcAddr gipa = nullptr;
  PFN_vkCreateInstance create_instance = nullptr;
};
const Loader& loader() {
  static Loader l = [] {
    Loader r;
    r.lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!r.lib) {
      const char* e = dlerror();
      r.error = std::string("no Vulkan loader: ") + (e ? e : "dlopen(libvulkan.so.1) failed") +
                " (install libvulkan1; on a GPU machine whose driver ships only its ICD, unpack Debian's "
                "libvulkan1 there: docs/VULKAN.md)";
      return r;
    }
    r.gipa = reinterpret_cast<PFN_vkGetInstanceProcAddr>(dlsym(r.lib, "vkGetInstanceProcAddr"));
    if (r.gipa) r.create_instance = reinterpret_cast<PFN_vkCreateInstance>(r.gipa(nullptr, "vkCreateInstance"));
    if (!r.gipa || !r.create_instance) r.error = "libvulkan.so.1 lacks vkGetInstanceProcAddr/vkCreateInstance";
    return r;
  }();
  return l;
}

struct Candidate {
  VkPhysicalDevice phys = VK_NULL_HANDLE;
  Availability a;
  std::uint32_t family = 0;
  bool dedicated_only = false;
  bool discrete = false;
};

bool has_extension(const Functions& f, VkPhysicalDevice p, const char* name) {
  std::uint32_t n = 0;
  f.vkEnumerateDeviceExtensionProperties(p, nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> ext(n);
  f.vkEnumerateDeviceExtensionProperties(p, nullptr, &n, ext.data());
  return std::any_of(ext.begin(), ext.end(), [&](const VkExtensionProperties& e) { return std::strcmp(e.extensionName, name) == 0; });
}

// What device `p` offers; a.usable and a.reason say whether it has all DirectPort needs.
Candidate inspect(const Functions& f, VkPhysicalDevice p) {
  Candidate c;
  c.phys = p;
  VkPhysicalDeviceDriverProperties drv{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  VkPhysicalDeviceIDProperties id{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES, &drv};
  VkPhysicalDeviceProperties2 props{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, &id};
  f.vkGetPhysicalDeviceProperties2(p, &props);
  c.a.device = props.properties.deviceName;
  c.a.uuid = format_uuid(id.deviceUUID);
  c.a.driver = std::string(drv.driverName) + " " + drv.driverInfo;
  c.a.api_version = props.properties.apiVersion;
  c.discrete = props.properties.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU;

  VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDeviceFeatures2 feats{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, &f12};
  f.vkGetPhysicalDeviceFeatures2(p, &feats);
  c.a.timeline = f12.timelineSemaphore;
  c.a.int64_atomics = f12.shaderBufferInt64Atomics;
  c.a.shader_int64 = feats.features.shaderInt64;
  c.a.external_memory_fd = has_extension(f, p, VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME);
  c.a.external_semaphore_fd = has_extension(f, p, VK_KHR_EXTERNAL_SEMAPHORE_FD_EXTENSION_NAME);
  if (c.a.external_semaphore_fd && c.a.timeline) {
    VkSemaphoreTypeCreateInfo type{VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO, nullptr, VK_SEMAPHORE_TYPE_TIMELINE, 0};
    VkPhysicalDeviceExternalSemaphoreInfo info{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_SEMAPHORE_INFO, &type,
                                               VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT};
    VkExternalSemaphoreProperties out{VK_STRUCTURE_TYPE_EXTERNAL_SEMAPHORE_PROPERTIES};
    f.vkGetPhysicalDeviceExternalSemaphoreProperties(p, &info, &out);
    const auto need = VK_EXTERNAL_SEMAPHORE_FEATURE_EXPORTABLE_BIT | VK_EXTERNAL_SEMAPHORE_FEATURE_IMPORTABLE_BIT;
    if ((out.externalSemaphoreFeatures & need) != need) c.a.external_semaphore_fd = false;
  }
  if (c.a.external_memory_fd) {
    VkPhysicalDeviceExternalBufferInfo info{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_BUFFER_INFO, nullptr, 0,
                                            VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                                VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                                            VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT};
    VkExternalBufferProperties out{VK_STRUCTURE_TYPE_EXTERNAL_BUFFER_PROPERTIES};
    f.vkGetPhysicalDeviceExternalBufferProperties(p, &info, &out);
    const auto feats_mem = out.externalMemoryProperties.externalMemoryFeatures;
    const auto need = VK_EXTERNAL_MEMORY_FEATURE_EXPORTABLE_BIT | VK_EXTERNAL_MEMORY_FEATURE_IMPORTABLE_BIT;
    if ((feats_mem & need) != need) c.a.external_memory_fd = false;
    c.dedicated_only = feats_mem & VK_EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY_BIT;
  }
  std::uint32_t nq = 0;
  f.vkGetPhysicalDeviceQueueFamilyProperties(p, &nq, nullptr);
  std::vector<VkQueueFamilyProperties> q(nq);
  f.vkGetPhysicalDeviceQueueFamilyProperties(p, &nq, q.data());
  bool compute = false;
  for (std::uint32_t i = 0; i < nq; ++i) {
    if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
      c.family = i;
      compute = true;
      break;
    }
  }
  std::string missing;
  auto need = [&](bool ok, const char* what) {
    if (!ok) missing += (missing.empty() ? "" : ", ") + std::string(what);
  };
  need(c.a.api_version >= kApi, "Vulkan 1.2");
  need(c.a.timeline, "timeline semaphores");
  need(c.a.shader_int64, "shaderInt64");
  need(c.a.int64_atomics, "shaderBufferInt64Atomics");
  need(compute, "a compute queue");
  c.a.compute = missing.empty();
  need(c.a.external_semaphore_fd, "VK_KHR_external_semaphore_fd (exportable timeline semaphores)");
  need(c.a.external_memory_fd, "VK_KHR_external_memory_fd");
  c.a.usable = missing.empty();
  if (!c.a.usable) c.a.reason = "Vulkan device '" + c.a.device + "' (" + c.a.driver + ") lacks " + missing;
  return c;
}

// Instance-level table; `inst` must be valid.
Functions load_instance(VkInstance inst) {
  Functions f;
  const auto& l = loader();
#define DP_VK_LOAD(name) f.name = reinterpret_cast<PFN_##name>(l.gipa(inst, #name));
  DP_VK_FUNCTIONS(DP_VK_LOAD)
#undef DP_VK_LOAD
  return f;
}

VkInstance create_instance(std::string& error) {
  const auto& l = loader();
  if (!l.create_instance) {
    error = l.error;
    return VK_NULL_HANDLE;
  }
  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO, nullptr, "directport", 1, "directport", 1, kApi};
  VkInstanceCreateInfo ci{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, nullptr, 0, &app, 0, nullptr, 0, nullptr};
  VkInstance inst = VK_NULL_HANDLE;
  VkResult rc = l.create_instance(&ci, nullptr, &inst);
  if (rc != VK_SUCCESS) {
    error = std::string("vkCreateInstance failed: ") + result_name(rc) +
            (rc == VK_ERROR_INCOMPATIBLE_DRIVER ? " (no Vulkan driver (ICD) found: set VK_DRIVER_FILES to the "
                                                  "driver's ICD json, docs/VULKAN.md)"
                                                : "");
    return VK_NULL_HANDLE;
  }
  return inst;
}

// The device `uuid` names ("" = the first usable, discrete first; failing that, with
// `compute_only`, the first that runs the compute kernels). Sets `error` if none.
bool choose(const Functions& f, VkInstance inst, const std::string& uuid, Candidate& out, std::string& error,
            bool compute_only = false) {
  std::uint32_t n = 0;
  f.vkEnumeratePhysicalDevices(inst, &n, nullptr);
  std::vector<VkPhysicalDevice> devs(n);
  f.vkEnumeratePhysicalDevices(inst, &n, devs.data());
  if (devs.empty()) {
    error = "the Vulkan loader found no device (is a driver's ICD installed? docs/VULKAN.md)";
    return false;
  }
  std::vector<Candidate> cs;
  for (auto p : devs) cs.push_back(inspect(f, p));
  std::stable_sort(cs.begin(), cs.end(), [](const Candidate& a, const Candidate& b) { return a.discrete > b.discrete; });
  std::string seen;
  for (auto& c : cs) {
    seen += (seen.empty() ? "" : "; ") + c.a.device + " " + c.a.uuid;
    if (!uuid.empty() && c.a.uuid != uuid) continue;
    if (c.a.usable || !uuid.empty()) {
      out = c;
      if (!c.a.usable) error = c.a.reason;
      return c.a.usable;
    }
  }
  if (!uuid.empty()) {
    error = "no Vulkan device has the UUID " + uuid + " (the CUDA device's); Vulkan sees: " + seen;
  } else if (compute_only) {
    for (auto& c : cs) {
      if (c.a.compute) {
        out = c;
        return true;
      }
    }
    error = cs.front().a.reason;
  } else {
    out = cs.front();
    error = cs.front().a.reason;
  }
  return false;
}

Availability probe() {
  Availability a;
  std::string error;
  VkInstance inst = create_instance(error);
  if (!inst) {
    a.reason = error;
    return a;
  }
  Functions f = load_instance(inst);
  Candidate c;
  bool ok = choose(f, inst, "", c, error);
  a = c.a;
  a.usable = ok;
  a.reason = ok ? "" : error;
  f.vkDestroyInstance(inst, nullptr);
  return a;
}

std::mutex g_ctx_mu;
std::weak_ptr<Context> g_ctx;

}  // namespace

#define DP_VK(call_name, ...) DP_VK_CHECK(ctx_->fn(), call_name, __VA_ARGS__)

void throw_vk(VkResult rc, const char* call, const char* file, int line) {
  throw VulkanError(std::string(call) + " failed: " + result_name(rc) + " (" + std::to_string(static_cast<int>(rc)) +
                    ") at " + file + ":" + std::to_string(line));
}

const Availability& availability() {
  static const Availability a = probe();
  return a;
}

nlohmann::json describe() {
  const auto& a = availability();
  nlohmann::json j{{"usable", a.usable}};
  if (!a.reason.empty()) j["reason"] = a.reason;
  if (!a.device.empty()) {
    j["device"] = a.device;
    j["uuid"] = a.uuid;
    j["driver"] = a.driver;
    j["api_version"] = std::to_string(VK_API_VERSION_MAJOR(a.api_version)) + "." +
                       std::to_string(VK_API_VERSION_MINOR(a.api_version)) + "." +
                       std::to_string(VK_API_VERSION_PATCH(a.api_version));
    j["timeline_semaphores"] = a.timeline;
    j["external_semaphore_fd"] = a.external_semaphore_fd;
    j["external_memory_fd"] = a.external_memory_fd;
    j["shader_int64"] = a.shader_int64;
    j["int64_atomics"] = a.int64_atomics;
  }
  return j;
}

// ---------------------------------------------------------------- Context

std::shared_ptr<Context> Context::get(const std::string& uuid) {
  std::lock_guard<std::mutex> lock(g_ctx_mu);
  if (auto c = g_ctx.lock()) {
    if (!uuid.empty() && c->uuid_ != uuid) {
      throw VulkanError("this process's Vulkan device is " + c->name_ + " " + c->uuid_ + ", not " + uuid +
                        ": a process uses one GPU for DirectPort's Vulkan kinds");
    }
    return c;
  }
  std::shared_ptr<Context> c(new Context());
  std::string error;
  c->instance_ = create_instance(error);
  if (!c->instance_) throw VulkanError("Vulkan is not usable here: " + error);
  Functions inst = load_instance(c->instance_);
  Candidate cand;
  // A device without the exports still runs the compute kernels; exporting on it fails naming
  // the missing extension.
  bool ok = choose(inst, c->instance_, uuid, cand, error, /*compute_only=*/true) ||
            (!uuid.empty() && cand.phys && cand.a.compute);
  if (!ok) {
    inst.vkDestroyInstance(c->instance_, nullptr);
    c->instance_ = VK_NULL_HANDLE;
    throw VulkanError("Vulkan is not usable here: " + error);
  }
  c->fn_ = inst;
  c->phys_ = cand.phys;
  c->family_ = cand.family;
  c->uuid_ = cand.a.uuid;
  c->name_ = cand.a.device;
  c->dedicated_only_ = cand.dedicated_only;
  inst.vkGetPhysicalDeviceMemoryProperties(c->phys_, &c->mem_);
  {
    VkPhysicalDeviceProperties2 props{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    inst.vkGetPhysicalDeviceProperties2(c->phys_, &props);
    c->max_storage_range_ = props.properties.limits.maxStorageBufferRange;
  }

  const float prio = 1.0f;
  VkDeviceQueueCreateInfo q{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, nullptr, 0, c->family_, 1, &prio};
  VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  f12.timelineSemaphore = VK_TRUE;
  f12.shaderBufferInt64Atomics = VK_TRUE;
  VkPhysicalDeviceFeatures2 feats{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, &f12};
  feats.features.shaderInt64 = VK_TRUE;
  std::vector<const char*> exts;
  if (cand.a.external_memory_fd) exts.push_back(kDeviceExtensions[0]);
  if (cand.a.external_semaphore_fd) exts.push_back(kDeviceExtensions[1]);
  c->exports_ = cand.a.usable;
  c->missing_ = cand.a.reason;
  VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, &feats, 0, 1, &q, 0, nullptr,
                         static_cast<std::uint32_t>(exts.size()), exts.data(), nullptr};
  VkResult rc = inst.vkCreateDevice(c->phys_, &dci, nullptr, &c->device_);
  if (rc != VK_SUCCESS) {
    c->device_ = VK_NULL_HANDLE;
    throw_vk(rc, "vkCreateDevice", __FILE__, __LINE__);  // ~Context destroys the instance
  }
#define DP_VK_LOAD_DEVICE(name) \
  c->fn_.name = reinterpret_cast<PFN_##name>(inst.vkGetDeviceProcAddr(c->device_, #name));
  DP_VK_DEVICE_FUNCTIONS(DP_VK_LOAD_DEVICE)
#undef DP_VK_LOAD_DEVICE
  // Every core function must be there; the export ones only where the extensions are.
  const bool have_exports = c->fn_.vkGetSemaphoreFdKHR && c->fn_.vkImportSemaphoreFdKHR && c->fn_.vkGetMemoryFdKHR;
  if (c->exports_ && !have_exports) throw VulkanError("the Vulkan driver of " + c->name_ + " lacks its fd export functions");
#define DP_VK_CHECK_LOADED(name) \
  if (!c->fn_.name && std::string(#name).find("Fd") == std::string::npos) \
    throw VulkanError("the Vulkan driver of " + c->name_ + " lacks " #name);
  DP_VK_DEVICE_FUNCTIONS(DP_VK_CHECK_LOADED)
#undef DP_VK_CHECK_LOADED
  c->fn_.vkGetDeviceQueue(c->device_, c->family_, 0, &c->queue_);
  g_ctx = c;
  return c;
}

Context::~Context() {
  if (device_) {
    if (fn_.vkDeviceWaitIdle) fn_.vkDeviceWaitIdle(device_);
    if (fn_.vkDestroyDevice) fn_.vkDestroyDevice(device_, nullptr);
  }
  if (instance_ && fn_.vkDestroyInstance) fn_.vkDestroyInstance(instance_, nullptr);
}

std::uint32_t Context::memory_type(std::uint32_t bits, VkMemoryPropertyFlags want) const {
  for (std::uint32_t i = 0; i < mem_.memoryTypeCount; ++i) {
    if ((bits & (1u << i)) && (mem_.memoryTypes[i].propertyFlags & want) == want) return i;
  }
  throw VulkanError("no Vulkan memory type of " + name_ + " has the properties 0x" + std::to_string(want) +
                    " among the allowed types 0x" + std::to_string(bits));
}

void Context::submit(const VkSubmitInfo& info) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  VkResult rc = fn_.vkQueueSubmit(queue_, 1, &info, VK_NULL_HANDLE);
  if (rc != VK_SUCCESS) throw_vk(rc, "vkQueueSubmit", __FILE__, __LINE__);
}

void Context::wait_idle() {
  std::lock_guard<std::mutex> lock(queue_mu_);
  VkResult rc = fn_.vkQueueWaitIdle(queue_);
  if (rc != VK_SUCCESS) throw_vk(rc, "vkQueueWaitIdle", __FILE__, __LINE__);
}

// ---------------------------------------------------------------- Timeline

void Context::require_exports() const {
  if (!exports_) throw VulkanError("cannot share Vulkan objects between processes here: " + missing_);
}

Timeline::Timeline(std::shared_ptr<Context> ctx, bool exportable) : ctx_(std::move(ctx)) {
  if (exportable) ctx_->require_exports();
  VkExportSemaphoreCreateInfo exp{VK_STRUCTURE_TYPE_EXPORT_SEMAPHORE_CREATE_INFO, nullptr,
                                  VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT};
  VkSemaphoreTypeCreateInfo type{VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO, exportable ? &exp : nullptr,
                                 VK_SEMAPHORE_TYPE_TIMELINE, 0};
  VkSemaphoreCreateInfo ci{VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, &type, 0};
  DP_VK(vkCreateSemaphore, ctx_->device(), &ci, nullptr, &sem_);
}

Timeline Timeline::import_fd(std::shared_ptr<Context> ctx, platform::UniqueFd fd) {
  ctx->require_exports();
  Timeline t(ctx, false);
  VkImportSemaphoreFdInfoKHR info{VK_STRUCTURE_TYPE_IMPORT_SEMAPHORE_FD_INFO_KHR, nullptr, t.sem_, 0,
                                  VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT, fd.get()};
  DP_VK_CHECK(ctx->fn(), vkImportSemaphoreFdKHR, ctx->device(), &info);
  fd.release();  // Vulkan owns it now
  return t;
}

Timeline::Timeline(Timeline&& o) noexcept : ctx_(std::move(o.ctx_)), sem_(std::exchange(o.sem_, VK_NULL_HANDLE)) {}
Timeline& Timeline::operator=(Timeline&& o) noexcept {
  std::swap(ctx_, o.ctx_);
  std::swap(sem_, o.sem_);
  return *this;
}
Timeline::~Timeline() {
  if (sem_) ctx_->fn().vkDestroySemaphore(ctx_->device(), sem_, nullptr);
}

platform::UniqueFd Timeline::export_fd() const {
  int fd = -1;
  VkSemaphoreGetFdInfoKHR info{VK_STRUCTURE_TYPE_SEMAPHORE_GET_FD_INFO_KHR, nullptr, sem_,
                               VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT};
  DP_VK(vkGetSemaphoreFdKHR, ctx_->device(), &info, &fd);
  return platform::UniqueFd(fd);
}

std::uint64_t Timeline::value() const {
  std::uint64_t v = 0;
  DP_VK(vkGetSemaphoreCounterValue, ctx_->device(), sem_, &v);
  return v;
}

bool Timeline::wait(std::uint64_t v, std::chrono::nanoseconds timeout) const {
  VkSemaphoreWaitInfo info{VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO, nullptr, 0, 1, &sem_, &v};
  VkResult rc = ctx_->fn().vkWaitSemaphores(ctx_->device(), &info, static_cast<std::uint64_t>(std::max<std::int64_t>(0, timeout.count())));
  if (rc == VK_TIMEOUT) return false;
  if (rc != VK_SUCCESS) throw_vk(rc, "vkWaitSemaphores", __FILE__, __LINE__);
  return true;
}

void Timeline::host_signal(std::uint64_t v) const {
  if (value() >= v) return;
  VkSemaphoreSignalInfo info{VK_STRUCTURE_TYPE_SEMAPHORE_SIGNAL_INFO, nullptr, sem_, v};
  DP_VK(vkSignalSemaphore, ctx_->device(), &info);
}

void Timeline::queue_signal(std::uint64_t v) const {
  VkTimelineSemaphoreSubmitInfo tl{VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO, nullptr, 0, nullptr, 1, &v};
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO, &tl, 0, nullptr, nullptr, 0, nullptr, 1, &sem_};
  ctx_->submit(si);
}

// ---------------------------------------------------------------- Buffer

void Buffer::create_buffer(bool external) {
  VkExternalMemoryBufferCreateInfo ext{VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO, nullptr,
                                       VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT};
  VkBufferCreateInfo ci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                        external ? &ext : nullptr,
                        0,
                        bytes_,
                        VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                        VK_SHARING_MODE_EXCLUSIVE,
                        0,
                        nullptr};
  DP_VK(vkCreateBuffer, ctx_->device(), &ci, nullptr, &buf_);
}

Buffer::Buffer(std::shared_ptr<Context> ctx, std::size_t bytes, Where where) : ctx_(std::move(ctx)), bytes_(bytes) {
  DP_EXPECTS(bytes > 0, "a Vulkan buffer needs at least one byte");
  const bool exportable = where == Where::device_exportable;
  if (exportable && !ctx_->fn().vkGetMemoryFdKHR) {
    throw VulkanError("cannot export Vulkan memory here: the device " + ctx_->name() + " lacks VK_KHR_external_memory_fd");
  }
  create_buffer(exportable);
  VkMemoryRequirements req{};
  ctx_->fn().vkGetBufferMemoryRequirements(ctx_->device(), buf_, &req);
  alloc_ = req.size;
  dedicated_ = exportable && ctx_->export_needs_dedicated();
  VkMemoryDedicatedAllocateInfo ded{VK_STRUCTURE_TYPE_MEMORY_DEDICATED_ALLOCATE_INFO, nullptr, VK_NULL_HANDLE, buf_};
  VkExportMemoryAllocateInfo exp{VK_STRUCTURE_TYPE_EXPORT_MEMORY_ALLOCATE_INFO, dedicated_ ? &ded : nullptr,
                                 VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT};
  const VkMemoryPropertyFlags want = where == Where::host
                                         ? VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
                                         : VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
  try {
    VkMemoryAllocateInfo ai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, exportable ? &exp : nullptr, alloc_,
                            ctx_->memory_type(req.memoryTypeBits, want)};
    DP_VK(vkAllocateMemory, ctx_->device(), &ai, nullptr, &mem_);
    DP_VK(vkBindBufferMemory, ctx_->device(), buf_, mem_, 0);
    if (where == Where::host) DP_VK(vkMapMemory, ctx_->device(), mem_, 0, VK_WHOLE_SIZE, 0, &map_);
  } catch (...) {
    free_all();
    throw;
  }
}

Buffer Buffer::import_fd(std::shared_ptr<Context> ctx, platform::UniqueFd fd, std::size_t bytes, bool dedicated,
                         std::size_t buffer_bytes) {
  if (!ctx->fn().vkGetMemoryFdKHR) {
    throw VulkanError("cannot import Vulkan memory here: the device " + ctx->name() + " lacks VK_KHR_external_memory_fd");
  }
  Buffer b;
  b.ctx_ = ctx;
  b.bytes_ = buffer_bytes ? buffer_bytes : bytes;
  b.dedicated_ = dedicated;
  if (b.bytes_ > bytes) {
    throw ValidationError("Vulkan buffer of " + std::to_string(b.bytes_) + " bytes over memory of " + std::to_string(bytes));
  }
  b.create_buffer(true);
  VkMemoryRequirements req{};
  ctx->fn().vkGetBufferMemoryRequirements(ctx->device(), b.buf_, &req);
  if (req.size > bytes) {
    throw ValidationError("imported Vulkan memory of " + std::to_string(bytes) + " bytes is smaller than its buffer needs (" +
                          std::to_string(req.size) + ")");
  }
  b.alloc_ = bytes;
  VkMemoryDedicatedAllocateInfo ded{VK_STRUCTURE_TYPE_MEMORY_DEDICATED_ALLOCATE_INFO, nullptr, VK_NULL_HANDLE, b.buf_};
  VkImportMemoryFdInfoKHR imp{VK_STRUCTURE_TYPE_IMPORT_MEMORY_FD_INFO_KHR, dedicated ? &ded : nullptr,
                              VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT, fd.get()};
  VkMemoryAllocateInfo ai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, &imp, bytes,
                          ctx->memory_type(req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)};
  DP_VK_CHECK(ctx->fn(), vkAllocateMemory, ctx->device(), &ai, nullptr, &b.mem_);
  fd.release();  // Vulkan owns it now
  DP_VK_CHECK(ctx->fn(), vkBindBufferMemory, ctx->device(), b.buf_, b.mem_, 0);
  return b;
}

Buffer::Buffer(Buffer&& o) noexcept
    : ctx_(std::move(o.ctx_)),
      buf_(std::exchange(o.buf_, VK_NULL_HANDLE)),
      mem_(std::exchange(o.mem_, VK_NULL_HANDLE)),
      bytes_(o.bytes_),
      alloc_(o.alloc_),
      dedicated_(o.dedicated_),
      map_(std::exchange(o.map_, nullptr)) {}
Buffer& Buffer::operator=(Buffer&& o) noexcept {
  std::swap(ctx_, o.ctx_);
  std::swap(buf_, o.buf_);
  std::swap(mem_, o.mem_);
  std::swap(bytes_, o.bytes_);
  std::swap(alloc_, o.alloc_);
  std::swap(dedicated_, o.dedicated_);
  std::swap(map_, o.map_);
  return *this;
}
Buffer::~Buffer() { free_all(); }
void Buffer::free_all() noexcept {
  if (!ctx_) return;
  if (map_) ctx_->fn().vkUnmapMemory(ctx_->device(), mem_);
  if (buf_) ctx_->fn().vkDestroyBuffer(ctx_->device(), buf_, nullptr);
  if (mem_) ctx_->fn().vkFreeMemory(ctx_->device(), mem_, nullptr);
  map_ = nullptr;
  buf_ = VK_NULL_HANDLE;
  mem_ = VK_NULL_HANDLE;
}

platform::UniqueFd Buffer::export_fd() const {
  int fd = -1;
  VkMemoryGetFdInfoKHR info{VK_STRUCTURE_TYPE_MEMORY_GET_FD_INFO_KHR, nullptr, mem_,
                            VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT};
  DP_VK(vkGetMemoryFdKHR, ctx_->device(), &info, &fd);
  return platform::UniqueFd(fd);
}

// ---------------------------------------------------------------- Commands

Commands::Commands(std::shared_ptr<Context> ctx) : ctx_(std::move(ctx)) {
  VkCommandPoolCreateInfo ci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, nullptr,
                             VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, ctx_->queue_family()};
  DP_VK(vkCreateCommandPool, ctx_->device(), &ci, nullptr, &pool_);
}
Commands::~Commands() {
  // Command buffers of ours may still be pending (an error left a loop early): let them finish.
  try {
    ctx_->wait_idle();
  } catch (const std::exception& e) {
    log_cleanup_failure(std::string("waiting for the Vulkan queue before freeing commands: ") + e.what());
  }
  ctx_->fn().vkDestroyCommandPool(ctx_->device(), pool_, nullptr);
}

VkCommandBuffer Commands::allocate() {
  VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, nullptr, pool_,
                                 VK_COMMAND_BUFFER_LEVEL_PRIMARY, 1};
  VkCommandBuffer cmd = VK_NULL_HANDLE;
  DP_VK(vkAllocateCommandBuffers, ctx_->device(), &ai, &cmd);
  return cmd;
}
void Commands::begin(VkCommandBuffer cmd) {
  DP_VK(vkResetCommandBuffer, cmd, 0);
  VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, nullptr,
                              VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT, nullptr};
  DP_VK(vkBeginCommandBuffer, cmd, &bi);
}
void Commands::end(VkCommandBuffer cmd) { DP_VK(vkEndCommandBuffer, cmd); }

// ---------------------------------------------------------------- ComputePipeline

ComputePipeline::ComputePipeline(std::shared_ptr<Context> ctx, const std::uint32_t* spirv, std::size_t words,
                                 std::uint32_t buffers, std::uint32_t push_bytes, std::uint32_t max_sets)
    : ctx_(std::move(ctx)), buffers_(buffers), max_sets_(max_sets) {
  VkDevice d = ctx_->device();
  try {
    VkShaderModuleCreateInfo sm{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, nullptr, 0, words * 4, spirv};
    DP_VK(vkCreateShaderModule, d, &sm, nullptr, &module_);
    std::vector<VkDescriptorSetLayoutBinding> b(buffers);
    for (std::uint32_t i = 0; i < buffers; ++i) {
      b[i] = {i, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1, VK_SHADER_STAGE_COMPUTE_BIT, nullptr};
    }
    VkDescriptorSetLayoutCreateInfo dl{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, nullptr, 0, buffers, b.data()};
    DP_VK(vkCreateDescriptorSetLayout, d, &dl, nullptr, &set_layout_);
    VkPushConstantRange pr{VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes};
    VkPipelineLayoutCreateInfo pl{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, nullptr, 0, 1, &set_layout_,
                                  push_bytes ? 1u : 0u, push_bytes ? &pr : nullptr};
    DP_VK(vkCreatePipelineLayout, d, &pl, nullptr, &layout_);
    VkComputePipelineCreateInfo cp{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO, nullptr, 0,
                                   {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, nullptr, 0,
                                    VK_SHADER_STAGE_COMPUTE_BIT, module_, "main", nullptr},
                                   layout_, VK_NULL_HANDLE, 0};
    DP_VK(vkCreateComputePipelines, d, VK_NULL_HANDLE, 1, &cp, nullptr, &pipe_);
    VkDescriptorPoolSize ps{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, buffers * max_sets};
    VkDescriptorPoolCreateInfo dp{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, nullptr, 0, max_sets, 1, &ps};
    DP_VK(vkCreateDescriptorPool, d, &dp, nullptr, &pool_);
  } catch (...) {
    free_all();
    throw;
  }
}

ComputePipeline::~ComputePipeline() {
  try {
    ctx_->wait_idle();  // pending dispatches may still use the pipeline and its sets
  } catch (const std::exception& e) {
    log_cleanup_failure(std::string("waiting for the Vulkan queue before freeing a pipeline: ") + e.what());
  }
  free_all();
}
void ComputePipeline::free_all() noexcept {
  const auto& f = ctx_->fn();
  VkDevice d = ctx_->device();
  if (pool_) f.vkDestroyDescriptorPool(d, pool_, nullptr);
  if (pipe_) f.vkDestroyPipeline(d, pipe_, nullptr);
  if (layout_) f.vkDestroyPipelineLayout(d, layout_, nullptr);
  if (set_layout_) f.vkDestroyDescriptorSetLayout(d, set_layout_, nullptr);
  if (module_) f.vkDestroyShaderModule(d, module_, nullptr);
  pool_ = VK_NULL_HANDLE;
  pipe_ = VK_NULL_HANDLE;
  layout_ = VK_NULL_HANDLE;
  set_layout_ = VK_NULL_HANDLE;
  module_ = VK_NULL_HANDLE;
}

VkDescriptorSet ComputePipeline::bind(const VkBuffer* buffers, std::uint32_t n) {
  DP_EXPECTS(n == buffers_, "bind() needs one buffer per binding");
  VkDescriptorSetAllocateInfo ai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, nullptr, pool_, 1, &set_layout_};
  VkDescriptorSet set = VK_NULL_HANDLE;
  DP_VK(vkAllocateDescriptorSets, ctx_->device(), &ai, &set);
  std::vector<VkDescriptorBufferInfo> infos(n);
  std::vector<VkWriteDescriptorSet> writes(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    infos[i] = {buffers[i], 0, VK_WHOLE_SIZE};
    writes[i] = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, nullptr, set, i, 0, 1, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                 nullptr, &infos[i], nullptr};
  }
  ctx_->fn().vkUpdateDescriptorSets(ctx_->device(), n, writes.data(), 0, nullptr);
  return set;
}

void ComputePipeline::reset() { DP_VK(vkResetDescriptorPool, ctx_->device(), pool_, 0); }

void full_barrier(const Context& ctx, VkCommandBuffer cmd) {
  VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER, nullptr,
                     VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                     VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                         VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_READ_BIT};
  ctx.fn().vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                                VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT |
                                    VK_PIPELINE_STAGE_HOST_BIT,
                                0, 1, &mb, 0, nullptr, 0, nullptr);
}

}  // namespace dp::vk
