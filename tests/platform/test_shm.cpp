// platform::Segment: named and anonymous shared memory, seals, locks, names.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "directport/core/error.hpp"
#include "directport/platform/shm.hpp"
#include "support/test_support.hpp"

namespace dp::platform {
namespace {

using dp::test::unique_name;

// A unique OS name that needs no manifest structure: "/dp-test-<pid>x<n>-<rand>".
struct ScopedName {
  std::string name = "/" + unique_name("dp-test-");
  ~ScopedName() { ::shm_unlink(name.c_str()); }
  std::string path() const { return "/dev/shm" + name; }
  bool exists() const {
    struct stat st {};
    return ::stat(path().c_str(), &st) == 0;
  }
};

std::vector<unsigned char> random_bytes(std::size_t n) {
  std::mt19937_64 rng(dp::test::test_seed() ^ n);
  std::vector<unsigned char> v(n);
  for (auto& b : v) b = static_cast<unsigned char>(rng() | 1);  // never zero
  return v;
}

TEST(Shm, NamedLifecycleCreateOpenUnlink) {
  ScopedName n;
  auto bytes = random_bytes(10000);
  {
    Segment w = Segment::create_named(n.name, bytes.size());
    ASSERT_NE(w.data(), nullptr);
    EXPECT_EQ(w.size(), bytes.size());
    EXPECT_EQ(w.access(), Access::read_write);
    EXPECT_EQ(w.name(), n.name);
    EXPECT_TRUE(n.exists());
    std::memcpy(w.data(), bytes.data(), bytes.size());

    Segment r = Segment::open_named(n.name, Access::read_only);
    EXPECT_EQ(r.size(), bytes.size());
    EXPECT_EQ(r.access(), Access::read_only);
    EXPECT_EQ(std::memcmp(r.data(), bytes.data(), bytes.size()), 0);
    // Writes stay visible through the other mapping (same object, MAP_SHARED).
    static_cast<unsigned char*>(w.data())[1234] ^= 0xff;
    EXPECT_EQ(static_cast<const unsigned char*>(r.data())[1234], bytes[1234] ^ 0xff);

    // A reader does not own the name: destroying it leaves the segment named.
    r = Segment();
    EXPECT_TRUE(n.exists());
  }
  // The creator unlinks its name on destruction.
  EXPECT_FALSE(n.exists());
}

TEST(Shm, DisownNameKeepsItAndUnlinkRemovesIt) {
  ScopedName n;
  {
    Segment w = Segment::create_named(n.name, 4096);
    w.disown_name();
  }
  EXPECT_TRUE(n.exists());
  Segment::unlink(n.name);
  EXPECT_FALSE(n.exists());
  EXPECT_NO_THROW(Segment::unlink(n.name)) << "unlinking a missing name is not an error";
}

TEST(Shm, CreatedWithMode0600) {
  ScopedName n;
  mode_t old = ::umask(0);  // the mode must not depend on the umask
  Segment w = Segment::create_named(n.name, 4096);
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(n.path().c_str(), &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::getuid());
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), 4096u);
}

TEST(Shm, DoubleCreateIsEEXIST) {
  ScopedName n;
  Segment a = Segment::create_named(n.name, 4096);
  try {
    Segment b = Segment::create_named(n.name, 4096);
    FAIL() << "second create_named of the same name succeeded";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EEXIST);
    EXPECT_NE(std::string(e.what()).find(n.name), std::string::npos) << e.what();
  }
  // The failed attempt did not take the first one's name away.
  EXPECT_TRUE(n.exists());
}

TEST(Shm, OpenMissingIsENOENT) {
  ScopedName n;
  for (auto access : {Access::read_only, Access::read_write}) {
    try {
      Segment::open_named(n.name, access);
      FAIL() << "open_named of a missing name succeeded";
    } catch (const SystemError& e) {
      EXPECT_EQ(e.error_code(), ENOENT);
      EXPECT_NE(std::string(e.what()).find(n.name), std::string::npos) << e.what();
    }
  }
}

TEST(Shm, ZeroSizeIsAPrecondition) {
  ScopedName n;
  EXPECT_THROW(Segment::create_named(n.name, 0), PreconditionError);
  EXPECT_THROW(Segment::create_anonymous("zero", 0, false), PreconditionError);
  EXPECT_FALSE(n.exists());
}

TEST(Shm, OpenOfAnEmptyObjectMapsNothing) {
  ScopedName n;
  int fd = ::shm_open(n.name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  Segment r = Segment::open_named(n.name, Access::read_only);
  EXPECT_EQ(r.size(), 0u);
  EXPECT_EQ(r.data(), nullptr);
}

TEST(Shm, SealedAnonymousRefusesNewWritableMappings) {
  auto bytes = random_bytes(3 * 4096 + 8);
  Segment s = Segment::create_anonymous("dp-test-sealed", bytes.size(), /*seal_writes=*/true);
  ASSERT_TRUE(s.sealed()) << "kernel lacks F_SEAL_FUTURE_WRITE (Linux >= 5.1)";
  // The creator's own mapping stays writable.
  std::memcpy(s.data(), bytes.data(), bytes.size());

  // A second writable shared mapping of the same descriptor is refused...
  void* w = ::mmap(nullptr, bytes.size(), PROT_READ | PROT_WRITE, MAP_SHARED, s.fd().get(), 0);
  EXPECT_EQ(w, MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  if (w != MAP_FAILED) ::munmap(w, bytes.size());
  // ...also through the library...
  try {
    Segment::map_fd(s.fd().dup(), bytes.size(), Access::read_write);
    FAIL() << "map_fd(read_write) of a sealed segment succeeded";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EPERM) << e.what();
  }
  // ...as are write() and resizing.
  EXPECT_EQ(::pwrite(s.fd().get(), "x", 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(s.fd().get(), 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(s.fd().get(), static_cast<off_t>(bytes.size() * 2)), -1);

  // A read-only mapping works and sees the creator's bytes.
  Segment r = Segment::map_fd(s.fd().dup(), bytes.size(), Access::read_only);
  ASSERT_NE(r.data(), nullptr);
  EXPECT_EQ(std::memcmp(r.data(), bytes.data(), bytes.size()), 0);
  EXPECT_EQ(dp::test::mapping_perms(r.data()), "r--s");
  // It cannot be upgraded to writable afterwards either.
  EXPECT_NE(::mprotect(r.data(), 4096, PROT_READ | PROT_WRITE), 0)
      << "mprotect() made a read-only mapping of a write-sealed memfd writable";
}

TEST(Shm, UnsealedAnonymousIsWritableByPeers) {
  Segment s = Segment::create_anonymous("dp-test-open", 4096, /*seal_writes=*/false);
  EXPECT_FALSE(s.sealed());
  Segment w = Segment::map_fd(s.fd().dup(), 4096, Access::read_write);
  static_cast<unsigned char*>(w.data())[17] = 0x5a;
  EXPECT_EQ(static_cast<unsigned char*>(s.data())[17], 0x5a);
}

TEST(Shm, MapFdLargerThanTheObjectIsAValidationError) {
  Segment s = Segment::create_anonymous("dp-test-small", 4096, true);
  try {
    Segment::map_fd(s.fd().dup(), 4097, Access::read_only);
    FAIL() << "map_fd accepted expected_size > object size";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("4096"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4097"), std::string::npos) << e.what();
  }
  // Smaller and equal sizes are fine (the object may be padded).
  EXPECT_EQ(Segment::map_fd(s.fd().dup(), 4096, Access::read_only).size(), 4096u);
  EXPECT_EQ(Segment::map_fd(s.fd().dup(), 100, Access::read_only).size(), 100u);
  EXPECT_THROW(Segment::map_fd(UniqueFd(), 8, Access::read_only), PreconditionError);
}

TEST(Shm, MapFdClosesTheDescriptorOnFailure) {
  Segment s = Segment::create_anonymous("dp-test-leak", 4096, true);
  int before = dp::test::count_open_fds();
  for (int i = 0; i < 20; ++i) {
    EXPECT_THROW(Segment::map_fd(s.fd().dup(), 8192, Access::read_only), ValidationError);
  }
  EXPECT_EQ(dp::test::count_open_fds(), before);
}

TEST(Shm, TryLockExclusiveBetweenOpenDescriptions) {
  ScopedName n;
  Segment owner = Segment::create_named(n.name, 4096);
  Segment other = Segment::open_named(n.name, Access::read_only);
  EXPECT_TRUE(owner.try_lock_exclusive());
  EXPECT_TRUE(owner.try_lock_exclusive()) << "re-locking one's own lock succeeds";
  EXPECT_FALSE(other.try_lock_exclusive()) << "another open description must see the lock";
  // A duplicate descriptor shares the open description, hence the lock.
  {
    UniqueFd same = owner.fd().dup();
    EXPECT_EQ(::flock(same.get(), LOCK_EX | LOCK_NB), 0);
  }
  // The lock goes with the last descriptor of the description.
  EXPECT_FALSE(other.try_lock_exclusive());
  owner.disown_name();
  owner = Segment();
  EXPECT_TRUE(other.try_lock_exclusive());
  Segment third = Segment::open_named(n.name, Access::read_only);
  EXPECT_FALSE(third.try_lock_exclusive());
}

TEST(ShmMP, LockIsReleasedWhenTheOwnerDies) {
  ScopedName n;
  auto child = dp::test::Child::fork([&](dp::test::LineChannel& io) {
    Segment s = Segment::create_named(n.name, 4096);
    s.disown_name();
    if (!s.try_lock_exclusive()) return 1;
    io.write_line("locked");
    io.read_line(std::chrono::milliseconds(-1));  // until the parent closes the pipe
    return 0;
  });
  ASSERT_TRUE(child.expect("locked", std::chrono::seconds(10))) << child.transcript();
  Segment seen = Segment::open_named(n.name, Access::read_only);
  EXPECT_FALSE(seen.try_lock_exclusive());
  child.kill(SIGKILL);
  ASSERT_TRUE(child.wait(std::chrono::seconds(10)));
  EXPECT_TRUE(seen.try_lock_exclusive()) << "the OS must drop a dead owner's lock";
}

TEST(Shm, StillNamedTracksTheName) {
  ScopedName n;
  Segment a = Segment::create_named(n.name, 4096);
  EXPECT_TRUE(a.still_named());
  Segment::unlink(n.name);
  EXPECT_FALSE(a.still_named());
  // A new object under the same name is not the old one.
  Segment b = Segment::create_named(n.name, 4096);
  EXPECT_FALSE(a.still_named());
  EXPECT_TRUE(b.still_named());
  Segment r = Segment::open_named(n.name, Access::read_only);
  EXPECT_TRUE(r.still_named());
  // Anonymous segments have no name to be under.
  EXPECT_FALSE(Segment::create_anonymous("anon", 64, false).still_named());
  EXPECT_FALSE(Segment().still_named());
}

TEST(Shm, ListFindsNamesByPrefix) {
  std::string stem = unique_name("dp-test-list-");
  std::vector<Segment> segs;
  for (const char* suffix : {".a", ".b", "x.c"})
    segs.push_back(Segment::create_named("/" + stem + suffix, 64));
  auto names = Segment::list(stem + ".");
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{stem + ".a", stem + ".b"}));
  EXPECT_EQ(Segment::list(stem).size(), 3u);
  EXPECT_TRUE(Segment::list(stem + "-nothing").empty());
}

TEST(Shm, MoveLeavesTheSourceEmpty) {
  ScopedName n;
  Segment a = Segment::create_named(n.name, 4096);
  void* p = a.data();
  Segment b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_FALSE(static_cast<bool>(a.fd()));
  EXPECT_EQ(b.data(), p);
  a = Segment();  // destroying the moved-from one does not unlink
  EXPECT_TRUE(n.exists());
  Segment c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  c = Segment();
  EXPECT_FALSE(n.exists());
}

}  // namespace
}  // namespace dp::platform
