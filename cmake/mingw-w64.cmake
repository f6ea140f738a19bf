# Cross-compiling for 64-bit Windows with MinGW-w64 (Debian: g++-mingw-w64-x86-64-posix).
#   cmake -S tests/windows -B build-win -DCMAKE_TOOLCHAIN_FILE=cmake/mingw-w64.cmake
# The posix thread model is preferred (std::thread, std::mutex); the win32 one is a fallback.
# Where Wine is installed it becomes the emulator: ctest runs the .exe files through it.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(DP_MINGW_PREFIX x86_64-w64-mingw32)

find_program(DP_MINGW_CXX NAMES ${DP_MINGW_PREFIX}-g++-posix ${DP_MINGW_PREFIX}-g++ REQUIRED)
find_program(DP_MINGW_CC NAMES ${DP_MINGW_PREFIX}-gcc-posix ${DP_MINGW_PREFIX}-gcc REQUIRED)
set(CMAKE_CXX_COMPILER ${DP_MINGW_CXX})
set(CMAKE_C_COMPILER ${DP_MINGW_CC})
find_program(CMAKE_RC_COMPILER NAMES ${DP_MINGW_PREFIX}-windres)

set(CMAKE_FIND_ROOT_PATH /usr/${DP_MINGW_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Debian's wine64 package installs the loader here; the `wine` wrapper package adds /usr/bin/wine.
find_program(DP_WINE NAMES wine64 wine PATHS /usr/lib/wine NO_CMAKE_FIND_ROOT_PATH)
if(DP_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${DP_WINE})
endif()
