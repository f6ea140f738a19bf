// Windows platform::Segment: named mappings (create/open/"unlink"), anonymous ones (sealing by
// access rights), the owner lock, listing, owners and the security descriptor.
#include <windows.h>
#include <aclapi.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "directport/core/error.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#include "directport/platform/shm.hpp"
#include "support.hpp"

namespace dp::platform {
namespace {

using namespace std::chrono_literals;

std::string segment_name() { return "/" + wintest::unique_name("dp-test-"); }

bool name_exists(const std::string& name) {
  std::wstring w = L"Local\\" + std::wstring(name.begin() + 1, name.end());
  HANDLE h = ::OpenFileMappingW(SECTION_QUERY, FALSE, w.c_str());
  if (!h) return false;
  ::CloseHandle(h);
  return true;
}

std::vector<unsigned char> random_bytes(std::size_t n) {
  std::mt19937_64 rng(n * 2654435761u);
  std::vector<unsigned char> v(n);
  for (auto& b : v) b = static_cast<unsigned char>(rng() | 1);  // never zero
  return v;
}

TEST(WinShm, NamedLifecycleCreateOpenUnlink) {
  const std::string n = segment_name();
  auto bytes = random_bytes(10000);
  {
    Segment w = Segment::create_named(n, bytes.size());
    ASSERT_NE(w.data(), nullptr);
    EXPECT_EQ(w.size(), bytes.size());
    EXPECT_EQ(w.access(), Access::read_write);
    EXPECT_TRUE(name_exists(n));
    std::memcpy(w.data(), bytes.data(), bytes.size());

    Segment r = Segment::open_named(n, Access::read_only);
    // The section's size as the OS keeps it: at least what was asked, at most a page more.
    EXPECT_GE(r.size(), bytes.size());
    EXPECT_LT(r.size(), bytes.size() + 4096);
    EXPECT_EQ(std::memcmp(r.data(), bytes.data(), bytes.size()), 0);
    static_cast<unsigned char*>(w.data())[1234] ^= 0xff;
    EXPECT_EQ(static_cast<const unsigned char*>(r.data())[1234], bytes[1234] ^ 0xff);
    // A read-only view really is read-only.
    DWORD old = 0;
    EXPECT_FALSE(::VirtualProtect(r.data(), 4096, PAGE_READWRITE, &old));
    EXPECT_TRUE(r.still_named());
    r = Segment();
    EXPECT_TRUE(name_exists(n)) << "a reader does not own the name";
  }
  EXPECT_FALSE(name_exists(n)) << "the creator's last handle takes the name with it";
}

TEST(WinShm, DoubleCreateIsEEXISTAndOpenMissingIsENOENT) {
  const std::string n = segment_name();
  Segment a = Segment::create_named(n, 4096);
  try {
    Segment::create_named(n, 4096);
    FAIL() << "second create_named of the same name succeeded";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EEXIST);
    EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
  EXPECT_TRUE(name_exists(n));
  const std::string missing = segment_name();
  for (auto access : {Access::read_only, Access::read_write}) {
    try {
      Segment::open_named(missing, access);
      FAIL() << "open_named of a missing name succeeded";
    } catch (const SystemError& e) {
      EXPECT_EQ(e.error_code(), ENOENT) << e.what();
    }
  }
}

TEST(WinShm, PreconditionsOnSizesAndNames) {
  EXPECT_THROW(Segment::create_named(segment_name(), 0), PreconditionError);
  EXPECT_THROW(Segment::create_anonymous("zero", 0, false), PreconditionError);
  EXPECT_THROW(Segment::create_named("/a\\b", 4096), PreconditionError);
  EXPECT_THROW(Segment::map_fd(UniqueFd(), 8, Access::read_only), PreconditionError);
}

TEST(WinShm, DisownNameKeepsItAndUnlinkRemovesIt) {
  const std::string n = segment_name();
  {
    Segment w = Segment::create_named(n, 4096);
    w.disown_name();
  }
  EXPECT_TRUE(name_exists(n)) << "a disowned name outlives its Segment";
  Segment::unlink(n);
  EXPECT_FALSE(name_exists(n));
  EXPECT_NO_THROW(Segment::unlink(n)) << "unlinking a missing name is not an error";
}

TEST(WinShm, UnlinkOfANameStillOpenIsEBUSYNotPretended) {
  const std::string n = segment_name();
  Segment w = Segment::create_named(n, 4096);
  try {
    Segment::unlink(n);
    FAIL() << "unlink of an open Windows mapping claimed success";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EBUSY);
    EXPECT_NE(std::string(e.what()).find("last handle"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(name_exists(n));
}

TEST(WinShm, SealedAnonymousRefusesWritableMappings) {
  auto bytes = random_bytes(3 * 4096 + 8);
  Segment s = Segment::create_anonymous("dp-test-sealed", bytes.size(), /*seal_writes=*/true);
  ASSERT_TRUE(s.sealed());
  std::memcpy(s.data(), bytes.data(), bytes.size());  // the creator's view stays writable
  // Through the library: EPERM, as on Linux.
  try {
    Segment::map_fd(s.fd().dup(), bytes.size(), Access::read_write);
    FAIL() << "map_fd(read_write) of a sealed segment succeeded";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EPERM) << e.what();
  }
  // Directly: the handle lacks SECTION_MAP_WRITE...
  EXPECT_EQ(::MapViewOfFile(s.fd().get(), FILE_MAP_WRITE, 0, 0, 0), nullptr);
  EXPECT_EQ(::GetLastError(), static_cast<DWORD>(ERROR_ACCESS_DENIED));
  // ...and cannot be widened by duplicating it with more access (the DACL refuses)...
  HANDLE wider = nullptr;
  EXPECT_FALSE(::DuplicateHandle(::GetCurrentProcess(), s.fd().get(), ::GetCurrentProcess(), &wider,
                                 SECTION_MAP_READ | SECTION_MAP_WRITE, FALSE, 0));
  EXPECT_EQ(::GetLastError(), static_cast<DWORD>(ERROR_ACCESS_DENIED));
  if (wider) ::CloseHandle(wider);
  // A read-only mapping works, sees the bytes, and cannot be made writable.
  Segment r = Segment::map_fd(s.fd().dup(), bytes.size(), Access::read_only);
  EXPECT_EQ(std::memcmp(r.data(), bytes.data(), bytes.size()), 0);
  DWORD old = 0;
  EXPECT_FALSE(::VirtualProtect(r.data(), 4096, PAGE_READWRITE, &old));
}

bool under_wine() {
  HMODULE ntdll = ::GetModuleHandleW(L"ntdll.dll");
  return ntdll && ::GetProcAddress(ntdll, "wine_get_version");
}

TEST(WinShm, SealedAnonymousDaclCannotBeRewritten) {
  if (under_wine()) {
    GTEST_SKIP() << "Wine does not implement OWNER RIGHTS (S-1-3-4): it still grants the owner WRITE_DAC, "
                    "so this holds on Windows only";
  }
  Segment s = Segment::create_anonymous("dp-test-dacl", 4096, /*seal_writes=*/true);
  // The OWNER RIGHTS ACE takes the owner's implicit WRITE_DAC away, ours included: no handle with
  // which to widen the DACL and then the handle.
  HANDLE h = nullptr;
  EXPECT_FALSE(::DuplicateHandle(::GetCurrentProcess(), s.fd().get(), ::GetCurrentProcess(), &h, WRITE_DAC, FALSE, 0));
  if (h) ::CloseHandle(h);
}

TEST(WinShm, UnsealedAnonymousIsWritableByPeers) {
  Segment s = Segment::create_anonymous("dp-test-open", 4096, /*seal_writes=*/false);
  EXPECT_FALSE(s.sealed());
  Segment w = Segment::map_fd(s.fd().dup(), 4096, Access::read_write);
  static_cast<unsigned char*>(w.data())[17] = 0x5a;
  EXPECT_EQ(static_cast<unsigned char*>(s.data())[17], 0x5a);
}

TEST(WinShm, MapFdChecksSizeAndKind) {
  Segment s = Segment::create_anonymous("dp-test-small", 4096, true);
  try {
    Segment::map_fd(s.fd().dup(), 4097, Access::read_only);
    FAIL() << "map_fd accepted expected_size > object size";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("4096"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4097"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Segment::map_fd(s.fd().dup(), 100, Access::read_only).size(), 100u);
  // A handle that is not a file mapping (an event) is refused, not mapped.
  UniqueFd ev(::CreateEventW(nullptr, TRUE, FALSE, nullptr));
  EXPECT_THROW(Segment::map_fd(std::move(ev), 8, Access::read_only), ValidationError);
}

TEST(WinShm, TryLockExclusiveBetweenSegments) {
  const std::string n = segment_name();
  Segment owner = Segment::create_named(n, 4096);
  Segment other = Segment::open_named(n, Access::read_only);
  EXPECT_TRUE(owner.try_lock_exclusive());
  EXPECT_TRUE(owner.try_lock_exclusive()) << "re-locking one's own lock succeeds";
  EXPECT_FALSE(other.try_lock_exclusive()) << "another Segment (even in this process) must see the lock";
  Segment moved = std::move(owner);
  EXPECT_FALSE(other.try_lock_exclusive()) << "the lock moves with the Segment";
  moved.disown_name();
  moved = Segment();
  EXPECT_TRUE(other.try_lock_exclusive()) << "the lock goes with its Segment";
  other = Segment();
  Segment::unlink(n);  // the parked, disowned name
  EXPECT_FALSE(name_exists(n));
}

TEST(WinShmMP, OwnerLockIsReleasedWhenTheOwnerDies) {
  const std::string n = segment_name();
  auto c = Child::spawn({wintest::helper_path(), "lock", n}, {true});
  ASSERT_TRUE(wintest::wait_until([&] { c.pump(); return c.output().find("locked") != std::string::npos || !c.running(); }, 20s))
      << c.output();
  ASSERT_EQ(c.output().rfind("locked", 0), 0u) << "helper: " << c.output();
  Segment probe = Segment::open_named(n, Access::read_only);
  EXPECT_FALSE(probe.try_lock_exclusive()) << "a live owner holds its lock";
  c.signal(9);
  ASSERT_TRUE(c.wait_for(20s));
  EXPECT_TRUE(probe.try_lock_exclusive()) << "the OS drops a dead owner's lock";
  EXPECT_TRUE(name_exists(n)) << "our probe still holds the name";
  probe = Segment();
  EXPECT_FALSE(name_exists(n)) << "no litter: the name went with the last handle";
}

TEST(WinShm, ListFindsNamedSegmentsByPrefix) {
  const std::string prefix = wintest::unique_name("dp-list-") + ".";
  Segment a = Segment::create_named("/" + prefix + "a", 4096);
  Segment b = Segment::create_named("/" + prefix + "b", 4096);
  Segment other = Segment::create_named(segment_name(), 4096);
  auto names = Segment::list(prefix);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{prefix + "a", prefix + "b"}));
}

TEST(WinShm, OwnerIsTheCurrentUser) {
  Segment a = Segment::create_named(segment_name(), 4096);
  EXPECT_EQ(a.owner_uid(), current_uid());
  Segment r = Segment::open_named(a.name(), Access::read_only);
  EXPECT_EQ(r.owner_uid(), current_uid());
  Segment anon = Segment::create_anonymous("dp-test-owner", 4096, true);
  EXPECT_EQ(anon.owner_uid(), current_uid());
}

// The DACL of `h`: present, protected, and granting nobody but the current user (and, where
// `owner_rights` is allowed, OWNER RIGHTS with READ_CONTROL only).
void expect_current_user_only(HANDLE h, bool owner_rights_allowed) {
  PSID owner = nullptr;
  PACL dacl = nullptr;
  PSECURITY_DESCRIPTOR sd = nullptr;
  ASSERT_EQ(::GetSecurityInfo(h, SE_KERNEL_OBJECT, OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION, &owner,
                              nullptr, &dacl, nullptr, &sd),
            static_cast<DWORD>(ERROR_SUCCESS));
  ASSERT_NE(dacl, nullptr) << "no DACL: everyone would have access";
  HANDLE token = nullptr;
  ASSERT_TRUE(::OpenProcessToken(::GetCurrentProcess(), TOKEN_QUERY, &token));
  unsigned char buf[256];
  DWORD len = 0;
  ASSERT_TRUE(::GetTokenInformation(token, TokenUser, buf, sizeof buf, &len));
  ::CloseHandle(token);
  PSID me = reinterpret_cast<TOKEN_USER*>(buf)->User.Sid;
  EXPECT_TRUE(::EqualSid(owner, me)) << "the owner is the current user";
  SID_IDENTIFIER_AUTHORITY creator = SECURITY_CREATOR_SID_AUTHORITY;
  PSID owner_rights = nullptr;
  ASSERT_TRUE(::AllocateAndInitializeSid(&creator, 1, 4, 0, 0, 0, 0, 0, 0, 0, &owner_rights));
  int user_aces = 0;
  for (DWORD i = 0; i < dacl->AceCount; ++i) {
    void* ace = nullptr;
    ASSERT_TRUE(::GetAce(dacl, i, &ace));
    auto* hdr = static_cast<ACE_HEADER*>(ace);
    ASSERT_EQ(hdr->AceType, ACCESS_ALLOWED_ACE_TYPE);
    auto* allowed = static_cast<ACCESS_ALLOWED_ACE*>(ace);
    PSID sid = &allowed->SidStart;
    if (::EqualSid(sid, me)) {
      ++user_aces;
    } else {
      EXPECT_TRUE(owner_rights_allowed && ::EqualSid(sid, owner_rights)) << "an ACE for another SID";
      EXPECT_EQ(allowed->Mask, static_cast<DWORD>(READ_CONTROL));
    }
  }
  EXPECT_EQ(user_aces, 1);
  ::FreeSid(owner_rights);
  ::LocalFree(sd);
}

TEST(WinShm, SecurityDescriptorGrantsTheCurrentUserOnly) {
  Segment named = Segment::create_named(segment_name(), 4096);
  {
    SCOPED_TRACE("named");
    expect_current_user_only(named.fd().get(), false);
  }
  Segment anon = Segment::create_anonymous("dp-test-sd", 4096, true);
  {
    SCOPED_TRACE("anonymous");
    expect_current_user_only(anon.fd().get(), true);
  }
}

}  // namespace
}  // namespace dp::platform
