// Windows: shared-memory segments are pagefile-backed file mappings (sections).
//
// - Named segments ("/dp.1000.default.cam") are "Local\dp.1000.default.cam": the session's
//   namespace, created with a DACL that grants the current user only. A Windows name cannot be
//   unlinked: it lives while any handle to the mapping is open, and vanishes with the last one.
//   So a creator's destruction removes the name once no reader holds it, a disowned name is kept
//   alive by a handle this process parks until unlink() or exit, and unlink() of a name another
//   process still holds fails with EBUSY instead of pretending.
// - Anonymous segments are unnamed sections. Sealing is done with access rights: the handle a
//   Segment keeps (and so every handle duplicated from it to a peer) lacks SECTION_MAP_WRITE
//   when sealed, and always lacks SECTION_EXTEND_SIZE; the section's DACL grants no more than
//   that and takes WRITE_DAC from its owner, so a peer cannot widen its handle by duplicating it
//   or by rewriting the DACL. Our own view, mapped before the handle was reduced, stays writable.
//   Pagefile-backed sections never shrink, which is what F_SEAL_SHRINK guarantees on Linux.
// - The owner lock (try_lock_exclusive) is a single-instance named pipe
//   "\\.\pipe\dp-lock.s<session>.<name>": creating it with FILE_FLAG_FIRST_PIPE_INSTANCE
//   succeeds for one handle at a time, and the OS closes that handle when its process dies,
//   which is what flock() on an open file description gives on Linux.
#include "directport/platform/shm.hpp"

#include <cerrno>
#include <cstdio>
#include <map>
#include <mutex>
#include <utility>

#include "win32.hpp"

#include <aclapi.h>

namespace dp::platform {
namespace {

// ntdll's section and object-directory queries: documented in the WDK, absent from the SDK
// headers, present on every Windows since NT and in Wine.
using NTSTATUS_ = LONG;
struct SectionBasicInformation {
  PVOID base;
  ULONG attributes;
  LARGE_INTEGER size;
};
struct UnicodeString {
  USHORT length;
  USHORT maximum_length;
  PWSTR buffer;
};
struct ObjectAttributes {
  ULONG length;
  HANDLE root;
  UnicodeString* name;
  ULONG attributes;
  PVOID security_descriptor;
  PVOID security_qos;
};
struct ObjectDirectoryInformation {
  UnicodeString name;
  UnicodeString type_name;
};
using NtQuerySectionFn = NTSTATUS_(NTAPI*)(HANDLE, int, PVOID, SIZE_T, PSIZE_T);
using NtOpenDirectoryObjectFn = NTSTATUS_(NTAPI*)(PHANDLE, ACCESS_MASK, ObjectAttributes*);
using NtQueryDirectoryObjectFn = NTSTATUS_(NTAPI*)(HANDLE, PVOID, ULONG, BOOLEAN, BOOLEAN, PULONG, PULONG);
constexpr NTSTATUS_ kStatusNoMoreEntries = static_cast<NTSTATUS_>(0x8000001A);
constexpr ACCESS_MASK kDirectoryQuery = 0x0001;

template <typename Fn>
Fn ntdll(const char* name) {
  HMODULE m = ::GetModuleHandleW(L"ntdll.dll");
  return m ? reinterpret_cast<Fn>(reinterpret_cast<void*>(::GetProcAddress(m, name))) : nullptr;
}

// Access a Segment keeps on anonymous sections (and hands to peers): no write when sealed, never
// resize or rewrite the DACL.
constexpr DWORD kSealedAccess = SECTION_QUERY | SECTION_MAP_READ | READ_CONTROL;
constexpr DWORD kSharedAccess = kSealedAccess | SECTION_MAP_WRITE;

std::wstring object_name(const std::string& name) {
  std::string bare = !name.empty() && name[0] == '/' ? name.substr(1) : name;
  DP_EXPECTS(!bare.empty() && bare.size() < 200 && bare.find_first_of("\\/") == std::string::npos,
             "segment name '" + name + "' must be '/' then 1..199 characters without slashes");
  return L"Local\\" + win::widen(bare);
}

std::wstring lock_pipe_name(const std::string& name) {
  DWORD session = 0;
  ::ProcessIdToSessionId(::GetCurrentProcessId(), &session);
  std::string bare = !name.empty() && name[0] == '/' ? name.substr(1) : name;
  return L"\\\\.\\pipe\\dp-lock.s" + std::to_wstring(session) + L"." + win::widen(bare);
}

std::size_t section_size(HANDLE h, const std::string& what) {
  static const auto query = ntdll<NtQuerySectionFn>("NtQuerySection");
  if (!query) throw Error("NtQuerySection is missing from ntdll: cannot size " + what);
  SectionBasicInformation info{};
  NTSTATUS_ st = query(h, 0 /* SectionBasicInformation */, &info, sizeof info, nullptr);
  if (st < 0) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%08lx", static_cast<unsigned long>(st));
    throw ValidationError(what + " is not a file mapping we may query (NTSTATUS 0x" + buf + ")");
  }
  return static_cast<std::size_t>(info.size.QuadPart);
}

void* map_view(HANDLE h, std::size_t size, Access access, const std::string& what) {
  if (size == 0) return nullptr;
  DWORD want = access == Access::read_write ? FILE_MAP_READ | FILE_MAP_WRITE : FILE_MAP_READ;
  void* p = ::MapViewOfFile(h, want, 0, 0, size);
  if (!p) {
    DWORD err = ::GetLastError();
    // The Linux layer reports a write-sealed segment as EPERM; the same holds here.
    if (err == ERROR_ACCESS_DENIED && access == Access::read_write) {
      win::throw_win32("mapping " + what + " writable (it is write-sealed or read-only to us)", err, EPERM);
    }
    win::throw_win32("mapping " + what, err);
  }
  return p;
}

UniqueFd reduce_access(HANDLE h, DWORD access, const std::string& what) {
  HANDLE out = nullptr;
  if (!::DuplicateHandle(::GetCurrentProcess(), h, ::GetCurrentProcess(), &out, access, FALSE, 0)) {
    win::throw_last_error("reducing the access of " + what);
  }
  return UniqueFd(out);
}

// Disowned names: the creator's handle parked here keeps the name alive (Windows has no other
// way to) until unlink() of that name or the end of the process.
std::mutex parked_mutex;
std::multimap<std::string, HANDLE>& parked() {
  static auto* m = new std::multimap<std::string, HANDLE>();  // never destroyed: used at exit
  return *m;
}

}  // namespace

Segment::~Segment() { reset(); }

Segment::Segment(Segment&& o) noexcept
    : fd_(std::move(o.fd_)),
      addr_(std::exchange(o.addr_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      name_(std::move(o.name_)),
      access_(o.access_),
      unlink_on_close_(std::exchange(o.unlink_on_close_, false)),
      sealed_(o.sealed_),
      lock_(std::move(o.lock_)),
      created_(std::exchange(o.created_, false)) {}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = std::move(o.fd_);
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
    name_ = std::move(o.name_);
    access_ = o.access_;
    unlink_on_close_ = std::exchange(o.unlink_on_close_, false);
    sealed_ = o.sealed_;
    lock_ = std::move(o.lock_);
    created_ = std::exchange(o.created_, false);
  }
  return *this;
}

void Segment::reset() noexcept {
  if (addr_ && !::UnmapViewOfFile(addr_)) {
    log_cleanup_failure("UnmapViewOfFile of " + name_ + ": " + win::error_text(::GetLastError()));
  }
  addr_ = nullptr;
  size_ = 0;
  // A creator that disowned its name parks its handle: the name outlives this Segment.
  if (created_ && !unlink_on_close_ && fd_) {
    try {
      std::lock_guard<std::mutex> g(parked_mutex);
      parked().emplace(name_, fd_.release());
    } catch (...) {
      log_cleanup_failure("keeping the name " + name_ + " alive failed; it goes with its last handle");
    }
  }
  unlink_on_close_ = false;
  created_ = false;
  fd_.reset();
  lock_.reset();
}

Segment Segment::create_named(const std::string& name, std::size_t size) {
  DP_EXPECTS(size > 0, "a shared-memory segment needs a non-zero size");
  std::wstring wname = object_name(name);
  win::OwnerOnlySecurity sec;
  const auto size64 = static_cast<std::uint64_t>(size);
  HANDLE h = ::CreateFileMappingW(INVALID_HANDLE_VALUE, sec.get(), PAGE_READWRITE,
                                  static_cast<DWORD>(size64 >> 32), static_cast<DWORD>(size64), wname.c_str());
  DWORD err = ::GetLastError();
  if (!h) {
    // ERROR_INVALID_HANDLE: the name belongs to an object of another type.
    win::throw_win32("creating shared-memory segment " + name, err, err == ERROR_INVALID_HANDLE ? EEXIST : 0);
  }
  if (err == ERROR_ALREADY_EXISTS) {
    ::CloseHandle(h);
    win::throw_win32("creating shared-memory segment " + name, err, EEXIST);
  }
  Segment s;
  s.fd_ = UniqueFd(h);
  s.name_ = name;
  s.unlink_on_close_ = true;
  s.created_ = true;
  s.access_ = Access::read_write;
  s.addr_ = map_view(h, size, Access::read_write, name);
  s.size_ = size;
  return s;
}

// The size is the section's as the OS keeps it: Windows and Wine may round it up to a page, so
// it can exceed what the creator asked for (readers validate the header's own sizes anyway).
Segment Segment::open_named(const std::string& name, Access access) {
  std::wstring wname = object_name(name);
  DWORD want = SECTION_QUERY | READ_CONTROL | FILE_MAP_READ | (access == Access::read_write ? FILE_MAP_WRITE : 0);
  HANDLE h = ::OpenFileMappingW(want, FALSE, wname.c_str());
  if (!h) win::throw_last_error("opening shared-memory segment " + name);
  Segment s;
  s.fd_ = UniqueFd(h);
  s.name_ = name;
  s.access_ = access;
  s.size_ = section_size(h, name);
  s.addr_ = map_view(h, s.size_, access, name);
  return s;
}

Segment Segment::create_anonymous(const std::string& debug_name, std::size_t size, bool seal_writes) {
  DP_EXPECTS(size > 0, "a shared-memory segment needs a non-zero size");
  const DWORD keep = seal_writes ? kSealedAccess : kSharedAccess;
  // The creating handle gets full access whatever the DACL says; the DACL binds every later one.
  win::OwnerOnlySecurity sec(keep, /*lock_owner_rights=*/true);
  const auto size64 = static_cast<std::uint64_t>(size);
  HANDLE h = ::CreateFileMappingW(INVALID_HANDLE_VALUE, sec.get(), PAGE_READWRITE,
                                  static_cast<DWORD>(size64 >> 32), static_cast<DWORD>(size64), nullptr);
  if (!h) win::throw_last_error("creating anonymous segment " + debug_name);
  UniqueFd full(h);
  Segment s;
  s.name_ = debug_name;
  s.access_ = Access::read_write;
  s.addr_ = map_view(h, size, Access::read_write, debug_name);
  s.size_ = size;
  s.fd_ = reduce_access(h, keep, debug_name);
  s.sealed_ = seal_writes;
  return s;
}

Segment Segment::map_fd(UniqueFd fd, std::size_t expected_size, Access access) {
  DP_EXPECTS(static_cast<bool>(fd), "map_fd() needs a handle");
  char buf[32];
  std::snprintf(buf, sizeof buf, "handle:%p", fd.get());
  // Size: a pagefile-backed section cannot shrink under a mapping, so no seal check is needed.
  std::size_t actual = section_size(fd.get(), "a received segment");
  if (actual < expected_size) {
    throw ValidationError("received segment holds " + std::to_string(actual) +
                          " bytes but the manifest promises " + std::to_string(expected_size));
  }
  Segment s;
  s.name_ = buf;
  s.access_ = access;
  s.size_ = expected_size;
  s.addr_ = map_view(fd.get(), expected_size, access, s.name_);
  s.fd_ = std::move(fd);
  return s;
}

void Segment::unlink(const std::string& name) {
  std::wstring wname = object_name(name);
  {
    std::lock_guard<std::mutex> g(parked_mutex);
    auto range = parked().equal_range(name);
    for (auto it = range.first; it != range.second; ++it) ::CloseHandle(it->second);
    parked().erase(range.first, range.second);
  }
  HANDLE h = ::OpenFileMappingW(SECTION_QUERY, FALSE, wname.c_str());
  if (!h) {
    DWORD err = ::GetLastError();
    if (err == ERROR_FILE_NOT_FOUND) return;  // ENOENT is not an error
    win::throw_win32("removing shared-memory segment " + name, err);
  }
  ::CloseHandle(h);
  throw SystemError("removing shared-memory segment " + name +
                        ": Windows removes a mapping's name only when its last handle closes, and a "
                        "handle to it is still open (this process or another)",
                    EBUSY);
}

std::vector<std::string> Segment::list(const std::string& prefix) {
  static const auto open_dir = ntdll<NtOpenDirectoryObjectFn>("NtOpenDirectoryObject");
  static const auto query_dir = ntdll<NtQueryDirectoryObjectFn>("NtQueryDirectoryObject");
  if (!open_dir || !query_dir) throw Error("listing segments needs NtOpenDirectoryObject/NtQueryDirectoryObject (ntdll)");
  DWORD session = 0;
  ::ProcessIdToSessionId(::GetCurrentProcessId(), &session);
  // "Local\" is this directory of the object namespace.
  std::wstring path = session == 0 ? L"\\BaseNamedObjects"
                                   : L"\\Sessions\\" + std::to_wstring(session) + L"\\BaseNamedObjects";
  UnicodeString upath{static_cast<USHORT>(path.size() * sizeof(wchar_t)),
                      static_cast<USHORT>(path.size() * sizeof(wchar_t)), path.data()};
  ObjectAttributes oa{sizeof(ObjectAttributes), nullptr, &upath, 0x40 /* OBJ_CASE_INSENSITIVE */, nullptr, nullptr};
  HANDLE dir = nullptr;
  NTSTATUS_ st = open_dir(&dir, kDirectoryQuery, &oa);
  if (st < 0) throw SystemError("opening the object directory " + win::narrow(path) + " to list segments", EACCES);
  UniqueFd owned(dir);
  std::vector<std::string> out;
  alignas(8) unsigned char buf[4096];
  ULONG context = 0;
  for (bool first = true;; first = false) {
    ULONG len = 0;
    st = query_dir(dir, buf, sizeof buf, TRUE, first ? TRUE : FALSE, &context, &len);
    if (st == kStatusNoMoreEntries) break;
    if (st < 0) throw SystemError("listing the object directory " + win::narrow(path), EIO);
    const auto* e = reinterpret_cast<const ObjectDirectoryInformation*>(buf);
    std::wstring type(e->type_name.buffer, e->type_name.length / sizeof(wchar_t));
    if (type != L"Section") continue;
    std::string n = win::narrow(std::wstring(e->name.buffer, e->name.length / sizeof(wchar_t)));
    if (n.compare(0, prefix.size(), prefix) == 0) out.push_back(n);
  }
  return out;
}

bool Segment::try_lock_exclusive() {
  DP_EXPECTS(static_cast<bool>(fd_), "locking an empty segment");
  if (lock_) return true;  // ours already, as re-flock()ing one's own lock succeeds
  DP_EXPECTS(!name_.empty() && name_[0] == '/', "only named segments have an owner lock on Windows");
  win::OwnerOnlySecurity sec;
  ::SetLastError(ERROR_SUCCESS);
  HANDLE h = ::CreateNamedPipeW(lock_pipe_name(name_).c_str(), PIPE_ACCESS_INBOUND | FILE_FLAG_FIRST_PIPE_INSTANCE,
                                PIPE_TYPE_BYTE | PIPE_REJECT_REMOTE_CLIENTS, 1, 0, 0, 0, sec.get());
  DWORD err = ::GetLastError();
  if (h == INVALID_HANDLE_VALUE) {
    if (err == ERROR_ACCESS_DENIED || err == ERROR_PIPE_BUSY) return false;  // someone holds it
    win::throw_win32("taking the owner lock of " + name_, err);
  }
  if (err == ERROR_ALREADY_EXISTS) {  // Wine: the first-instance flag is ignored, this is said
    ::CloseHandle(h);
    return false;
  }
  lock_ = UniqueFd(h);
  return true;
}

std::uint32_t Segment::owner_uid() const {
  DP_EXPECTS(static_cast<bool>(fd_), "owner_uid() of an empty segment");
  PSID owner = nullptr;
  PSECURITY_DESCRIPTOR sd = nullptr;
  DWORD err = ::GetSecurityInfo(fd_.get(), SE_KERNEL_OBJECT, OWNER_SECURITY_INFORMATION, &owner, nullptr,
                                nullptr, nullptr, &sd);
  if (err != ERROR_SUCCESS) win::throw_win32("reading the owner of " + name_, err);
  std::uint32_t uid = win::uid_of_sid(owner);
  ::LocalFree(sd);
  return uid;
}

bool Segment::still_named() const {
  // While we hold a handle, a Windows name cannot be given to another object: our named segment
  // is the one the name refers to for as long as it is open.
  return fd_ && !name_.empty() && name_[0] == '/';
}

}  // namespace dp::platform
