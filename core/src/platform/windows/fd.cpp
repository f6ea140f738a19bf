// Windows: UniqueFd owns a HANDLE; and the helpers every Windows platform file shares (win32.hpp).
#include "directport/platform/fd.hpp"

#include <cerrno>
#include <cstdio>

#include "win32.hpp"

namespace dp::platform {

void UniqueFd::reset(NativeHandle fd) noexcept {
  if (fd_ && !::CloseHandle(fd_)) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%p", fd_);
    log_cleanup_failure(std::string("CloseHandle(") + buf + ") failed: " + win::error_text(::GetLastError()));
  }
  fd_ = normalize_handle(fd);
}

UniqueFd UniqueFd::dup() const {
  DP_EXPECTS(fd_ != kNoHandle, "dup() of an empty handle");
  HANDLE out = nullptr;
  if (!::DuplicateHandle(::GetCurrentProcess(), fd_, ::GetCurrentProcess(), &out, 0, FALSE,
                         DUPLICATE_SAME_ACCESS)) {
    win::throw_last_error("duplicating a handle");
  }
  return UniqueFd(out);
}

namespace win {

std::wstring widen(const std::string& s) {
  if (s.empty()) return {};
  int n = ::MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), static_cast<int>(s.size()), nullptr, 0);
  if (n <= 0) throw PreconditionError("'" + s + "' is not valid UTF-8");
  std::wstring w(static_cast<std::size_t>(n), L'\0');
  ::MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), static_cast<int>(s.size()), w.data(), n);
  return w;
}

std::string narrow(const std::wstring& w) {
  if (w.empty()) return {};
  int n = ::WideCharToMultiByte(CP_UTF8, 0, w.data(), static_cast<int>(w.size()), nullptr, 0, nullptr, nullptr);
  if (n <= 0) return {};
  std::string s(static_cast<std::size_t>(n), '\0');
  ::WideCharToMultiByte(CP_UTF8, 0, w.data(), static_cast<int>(w.size()), s.data(), n, nullptr, nullptr);
  return s;
}

std::string error_text(DWORD err) noexcept {
  try {
    std::string out = "Win32 error " + std::to_string(err);
    wchar_t* msg = nullptr;
    DWORD n = ::FormatMessageW(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM |
                                   FORMAT_MESSAGE_IGNORE_INSERTS,
                               nullptr, err, 0, reinterpret_cast<wchar_t*>(&msg), 0, nullptr);
    if (n && msg) {
      std::wstring text(msg, n);
      while (!text.empty() && (text.back() == L'\n' || text.back() == L'\r' || text.back() == L' ')) text.pop_back();
      out += ": " + narrow(text);
    }
    if (msg) ::LocalFree(msg);
    return out;
  } catch (...) {
    return "Win32 error";
  }
}

int errno_for(DWORD err) noexcept {
  switch (err) {
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
    case ERROR_INVALID_NAME:
      return ENOENT;
    case ERROR_ALREADY_EXISTS:
    case ERROR_FILE_EXISTS:
      return EEXIST;
    case ERROR_ACCESS_DENIED:
      return EACCES;
    case ERROR_INVALID_HANDLE:
      return EBADF;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
    case ERROR_COMMITMENT_LIMIT:
      return ENOMEM;
    case ERROR_INVALID_PARAMETER:
      return EINVAL;
    case ERROR_PIPE_BUSY:
      return EAGAIN;
    case ERROR_BROKEN_PIPE:
    case ERROR_NO_DATA:
    case ERROR_PIPE_NOT_CONNECTED:
      return EPIPE;
    case ERROR_NOT_SUPPORTED:
    case ERROR_CALL_NOT_IMPLEMENTED:
      return ENOSYS;
    case ERROR_SEM_TIMEOUT:
    case WAIT_TIMEOUT:
      return ETIMEDOUT;
    default:
      return EIO;
  }
}

void throw_win32(const std::string& what, DWORD err, int errno_override) {
  throw SystemError(what + " [" + error_text(err) + "]", errno_override ? errno_override : errno_for(err));
}

namespace {

std::vector<unsigned char> token_user_sid(HANDLE token) {
  DWORD len = 0;
  ::GetTokenInformation(token, TokenUser, nullptr, 0, &len);
  if (len == 0) return {};
  std::vector<unsigned char> buf(len);
  if (!::GetTokenInformation(token, TokenUser, buf.data(), len, &len)) return {};
  PSID sid = reinterpret_cast<TOKEN_USER*>(buf.data())->User.Sid;
  DWORD n = ::GetLengthSid(sid);
  std::vector<unsigned char> out(n);
  if (!::CopySid(n, out.data(), sid)) return {};
  return out;
}

}  // namespace

std::vector<unsigned char> process_user_sid(HANDLE process) {
  HANDLE token = nullptr;
  if (!::OpenProcessToken(process, TOKEN_QUERY, &token)) return {};
  auto sid = token_user_sid(token);
  ::CloseHandle(token);
  return sid;
}

PSID current_user_sid() {
  static const std::vector<unsigned char> sid = [] {
    auto s = process_user_sid(::GetCurrentProcess());
    if (s.empty()) throw_last_error("reading the user SID of this process's token");
    return s;
  }();
  return const_cast<unsigned char*>(sid.data());
}

std::uint32_t uid_of_sid(PSID sid) {
  PSID mine = current_user_sid();
  if (!sid || !::IsValidSid(sid)) return kForeignUid;
  const DWORD n = *::GetSidSubAuthorityCount(sid);
  if (n == 0 || n != *::GetSidSubAuthorityCount(mine)) return kForeignUid;
  const auto* a = ::GetSidIdentifierAuthority(sid);
  const auto* b = ::GetSidIdentifierAuthority(mine);
  for (int i = 0; i < 6; ++i) {
    if (a->Value[i] != b->Value[i]) return kForeignUid;
  }
  for (DWORD i = 0; i + 1 < n; ++i) {
    if (*::GetSidSubAuthority(sid, i) != *::GetSidSubAuthority(mine, i)) return kForeignUid;
  }
  DWORD rid = *::GetSidSubAuthority(sid, n - 1);
  return rid == kForeignUid ? kForeignUid - 1 : rid;
}

OwnerOnlySecurity::OwnerOnlySecurity(DWORD user_access, bool lock_owner_rights) {
  PSID user = current_user_sid();
  SID_IDENTIFIER_AUTHORITY creator = SECURITY_CREATOR_SID_AUTHORITY;
  // OWNER RIGHTS, S-1-3-4: a fixed-size SID, built here rather than allocated.
  struct {
    SID sid;
  } owner_rights{};
  PSID owner_sid = &owner_rights.sid;
  if (!::InitializeSid(owner_sid, &creator, 1)) throw_last_error("building the OWNER RIGHTS SID");
  *::GetSidSubAuthority(owner_sid, 0) = 4;  // SECURITY_CREATOR_OWNER_RIGHTS_RID

  DWORD size = sizeof(ACL) + sizeof(ACCESS_ALLOWED_ACE) - sizeof(DWORD) + ::GetLengthSid(user);
  if (lock_owner_rights) size += sizeof(ACCESS_ALLOWED_ACE) - sizeof(DWORD) + ::GetLengthSid(owner_sid);
  acl_.assign((size + 3) & ~3u, 0);
  auto* acl = reinterpret_cast<ACL*>(acl_.data());
  if (!::InitializeAcl(acl, static_cast<DWORD>(acl_.size()), ACL_REVISION)) throw_last_error("initialising a DACL");
  if (!::AddAccessAllowedAce(acl, ACL_REVISION, user_access, user)) throw_last_error("granting the current user in a DACL");
  if (lock_owner_rights && !::AddAccessAllowedAce(acl, ACL_REVISION, READ_CONTROL, owner_sid)) {
    throw_last_error("restricting OWNER RIGHTS in a DACL");
  }
  if (!::InitializeSecurityDescriptor(&sd_, SECURITY_DESCRIPTOR_REVISION) ||
      !::SetSecurityDescriptorOwner(&sd_, user, FALSE) ||
      !::SetSecurityDescriptorDacl(&sd_, TRUE, acl, FALSE) ||
      !::SetSecurityDescriptorControl(&sd_, SE_DACL_PROTECTED, SE_DACL_PROTECTED)) {
    throw_last_error("building a security descriptor for the current user");
  }
  sa_.nLength = sizeof sa_;
  sa_.lpSecurityDescriptor = &sd_;
  sa_.bInheritHandle = FALSE;
}

UniqueFd current_process_handle() {
  HANDLE h = nullptr;
  if (!::DuplicateHandle(::GetCurrentProcess(), ::GetCurrentProcess(), ::GetCurrentProcess(), &h, 0,
                         FALSE, DUPLICATE_SAME_ACCESS)) {
    throw_last_error("opening a handle to this process");
  }
  return UniqueFd(h);
}

UniqueFd new_event() {
  HANDLE e = ::CreateEventW(nullptr, TRUE, FALSE, nullptr);
  if (!e) throw_last_error("creating an event");
  return UniqueFd(e);
}

}  // namespace win
}  // namespace dp::platform
