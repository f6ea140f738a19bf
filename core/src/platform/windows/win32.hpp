// Private to the Windows platform layer: the Win32 headers, Win32 errors as dp::SystemError, the
// current user's SID, and the security descriptor every object we create carries (an explicit,
// protected DACL that grants the current user's SID only). Implemented in fd.cpp.
#pragma once

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>

#include <cstdint>
#include <string>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/platform/fd.hpp"

namespace dp::platform::win {

// UTF-8 <-> UTF-16. widen() throws PreconditionError on malformed UTF-8.
std::wstring widen(const std::string& s);
std::string narrow(const std::wstring& s);

// "Win32 error 5: Access is denied." (never throws).
std::string error_text(DWORD err) noexcept;
// The errno closest to a Win32 error, so that callers testing SystemError::error_code() for
// ENOENT, EEXIST, EAGAIN... behave as on Linux.
int errno_for(DWORD err) noexcept;
// Throws SystemError("<what> [Win32 error N: text]", errno_for(err) or `errno_override`).
[[noreturn]] void throw_win32(const std::string& what, DWORD err, int errno_override = 0);
[[noreturn]] inline void throw_last_error(const std::string& what) { throw_win32(what, ::GetLastError()); }

// The user SID of this process's token (read once; valid for the process's life).
PSID current_user_sid();
// The user SID of `process`'s token, as bytes; empty if the token cannot be read.
std::vector<unsigned char> process_user_sid(HANDLE process);
// A uid-like number for a SID, so that the seam's uid fields mean something: the SID's last
// sub-authority (its RID) when the SID is ours or from the same authority and domain as ours,
// else kForeignUid, which current_uid() never returns. Security decisions that matter compare
// whole SIDs (the DACLs); these numbers only scope names and feed authorize_peer().
inline constexpr std::uint32_t kForeignUid = 0xFFFFFFFEu;
std::uint32_t uid_of_sid(PSID sid);

// Security attributes for an object only the current user may use: owner = the user, a protected
// DACL (nothing inherited) with one ACE granting the user `user_access`. With `lock_owner_rights`
// a second ACE for OWNER RIGHTS (S-1-3-4) grants READ_CONTROL only, which removes the owner's
// implicit WRITE_DAC: a holder of a reduced handle cannot rewrite the DACL to widen it.
// Handles are not inheritable. Not copyable (the descriptor points into its own buffers).
class OwnerOnlySecurity {
 public:
  explicit OwnerOnlySecurity(DWORD user_access = GENERIC_ALL, bool lock_owner_rights = false);
  OwnerOnlySecurity(const OwnerOnlySecurity&) = delete;
  OwnerOnlySecurity& operator=(const OwnerOnlySecurity&) = delete;
  SECURITY_ATTRIBUTES* get() noexcept { return &sa_; }

 private:
  std::vector<unsigned char> acl_;
  SECURITY_DESCRIPTOR sd_{};
  SECURITY_ATTRIBUTES sa_{};
};

// A real (not pseudo) handle to this process, for APIs that store a peer process.
UniqueFd current_process_handle();
// A manual-reset event, unsignalled, for one overlapped operation.
UniqueFd new_event();

}  // namespace dp::platform::win
