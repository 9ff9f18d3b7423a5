# BpfObject.cmake — build BPF programs (bpf/*.bpf.c) into libbpf skeleton headers.
#
#   include(BpfObject)          # runs the configure-time check once per directory scope
#   if(KGMP_HAVE_BPF)
#     kgmp_bpf_object(kgmp_trace ${PROJECT_SOURCE_DIR}/bpf/kgmp_trace.bpf.c
#                     ${PROJECT_SOURCE_DIR}/bpf/kgmp_trace.h)
#     target_link_libraries(mylib PRIVATE kgmp_trace_skel kgmp_libbpf)
#     # then: #include "kgmp_trace.skel.h"  (struct kgmp_trace, kgmp_trace__open(), ...)
#   endif()
#
# What the check needs (KGMP_HAVE_BPF is OFF, with a message naming what is missing, when any
# of it is absent; the rest of the build goes on without BPF):
#   - /sys/kernel/btf/vmlinux on the BUILD machine: vmlinux.h is generated from it at build
#     time (CO-RE relocates field offsets for the machine the program runs on);
#   - clang-19 (KGMP_BPF_CLANG overrides), which has the BPF target;
#   - bpftool >= 7.5 (KGMP_BPFTOOL overrides; Debian puts it in /usr/sbin, not on a user's PATH);
#   - libbpf >= 1.4: headers and the static libbpf.a (a dynamic link would silently pick up
#     bookworm's libbpf 1.1), plus libelf and zlib, linked dynamically.
# -DKGMP_WITH_BPF=OFF turns all of it off.
#
# Generated files (vmlinux.h, the .bpf.o, the .skel.h) live in the build tree only.
#
# Rejected: vendoring a vmlinux.h (it goes stale with the kernel and is 2.8 MB; CO-RE makes a
# header from the build machine good enough for any kernel with the fields we read); the
# libbpf-bootstrap `bpftool btf dump ... > file` in a shell (quoting differs between
# generators): the steps run this same file in script mode instead.

# ---- script mode: the build steps -------------------------------------------------------
if(CMAKE_SCRIPT_MODE_FILE)
  if(KGMP_BPF_STEP STREQUAL "vmlinux")
    execute_process(COMMAND "${BPFTOOL}" btf dump file "${BTF}" format c
                    OUTPUT_FILE "${OUT}.tmp" RESULT_VARIABLE rc ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      file(REMOVE "${OUT}.tmp")
      message(FATAL_ERROR "bpftool btf dump file ${BTF} failed (${rc}): ${err}")
    endif()
    # Unchanged BTF (a reboot into the same kernel): keep the old file and its time stamp, so
    # that nothing downstream rebuilds.
    file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
    file(REMOVE "${OUT}.tmp")
  elseif(KGMP_BPF_STEP STREQUAL "skeleton")
    execute_process(COMMAND "${BPFTOOL}" gen skeleton "${OBJ}" name "${NAME}"
                    OUTPUT_FILE "${OUT}.tmp" RESULT_VARIABLE rc ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      file(REMOVE "${OUT}.tmp")
      message(FATAL_ERROR "bpftool gen skeleton ${OBJ} failed (${rc}): ${err}")
    endif()
    # bpftool >= 7.5 emits `map->link = ...` for struct_ops maps; libbpf < 1.5's
    # struct bpf_map_skeleton has no such member. Dropping the line only disables the
    # skeleton's auto-attach of struct_ops, which kgmp never uses (it attaches explicitly).
    if(LIBBPF_H)
      file(READ "${LIBBPF_H}" libbpf_h)
      string(REGEX MATCH "struct bpf_map_skeleton {[^}]*}" mapskel "${libbpf_h}")
      if(NOT mapskel MATCHES "link;")
        file(STRINGS "${OUT}.tmp" lines)
        file(READ "${OUT}.tmp" text)
        string(REGEX REPLACE "\n[^\n]*map->link = [^\n]*" "" text "${text}")
        file(WRITE "${OUT}.tmp" "${text}")
      endif()
    endif()
    file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
    file(REMOVE "${OUT}.tmp")
  else()
    message(FATAL_ERROR "BpfObject.cmake: unknown KGMP_BPF_STEP '${KGMP_BPF_STEP}'")
  endif()
  return()
endif()

# ---- configure-time check ---------------------------------------------------------------
option(KGMP_WITH_BPF "Build the eBPF monitors when the tools are present" ON)
set(KGMP_BPF_BTF "/sys/kernel/btf/vmlinux" CACHE FILEPATH
    "The kernel BTF vmlinux.h is generated from (the build machine's)")

function(_kgmp_bpf_check)
  set(missing "")
  if(NOT KGMP_WITH_BPF)
    list(APPEND missing "KGMP_WITH_BPF is OFF")
  endif()
  if(NOT EXISTS "${KGMP_BPF_BTF}")
    list(APPEND missing "${KGMP_BPF_BTF} (a kernel built with CONFIG_DEBUG_INFO_BTF=y)")
  endif()

  find_program(KGMP_BPF_CLANG NAMES clang-19 DOC "clang with the BPF target, for *.bpf.c")
  if(NOT KGMP_BPF_CLANG)
    list(APPEND missing "clang-19 (Debian package clang-19)")
  endif()

  find_program(KGMP_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin /usr/local/sbin
               DOC "bpftool >= 7.5, for vmlinux.h and skeletons")
  if(NOT KGMP_BPFTOOL)
    list(APPEND missing "bpftool >= 7.5 (Debian package bpftool from bookworm-backports)")
  else()
    execute_process(COMMAND "${KGMP_BPFTOOL}" version OUTPUT_VARIABLE out ERROR_QUIET
                    RESULT_VARIABLE rc)
    if(rc EQUAL 0 AND out MATCHES "v([0-9]+\\.[0-9]+(\\.[0-9]+)?)")
      set(ver "${CMAKE_MATCH_1}")
      if(ver VERSION_LESS 7.5)
        list(APPEND missing
             "bpftool >= 7.5 (found ${ver} at ${KGMP_BPFTOOL}, Debian package bpftool from bookworm-backports)")
      endif()
    else()
      list(APPEND missing "a working bpftool (`${KGMP_BPFTOOL} version` failed)")
    endif()
  endif()

  find_path(KGMP_LIBBPF_INCLUDE_DIR bpf/libbpf.h DOC "libbpf's headers")
  find_library(KGMP_LIBBPF_STATIC NAMES libbpf.a DOC "the static libbpf (>= 1.4)")
  find_library(KGMP_LIBELF NAMES elf)
  find_library(KGMP_LIBZ NAMES z)
  if(NOT KGMP_LIBBPF_INCLUDE_DIR OR NOT KGMP_LIBBPF_STATIC)
    list(APPEND missing
         "libbpf >= 1.4 headers and libbpf.a (Debian package libbpf-dev from bookworm-backports)")
  else()
    file(STRINGS "${KGMP_LIBBPF_INCLUDE_DIR}/bpf/libbpf_version.h" vlines
         REGEX "#define LIBBPF_(MAJOR|MINOR)_VERSION")
    string(REGEX MATCH "MAJOR_VERSION ([0-9]+)" _ "${vlines}")
    set(major "${CMAKE_MATCH_1}")
    string(REGEX MATCH "MINOR_VERSION ([0-9]+)" _ "${vlines}")
    set(minor "${CMAKE_MATCH_1}")
    if("${major}.${minor}" VERSION_LESS 1.4)
      list(APPEND missing
           "libbpf >= 1.4 (found ${major}.${minor} in ${KGMP_LIBBPF_INCLUDE_DIR}, Debian package libbpf-dev from bookworm-backports)")
    endif()
  endif()
  if(NOT KGMP_LIBELF)
    list(APPEND missing "libelf (Debian package libelf-dev)")
  endif()
  if(NOT KGMP_LIBZ)
    list(APPEND missing "zlib (Debian package zlib1g-dev)")
  endif()
  # __TARGET_ARCH_* for bpf_tracing.h (PT_REGS_* macros).
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    set(KGMP_BPF_ARCH x86 PARENT_SCOPE)
  elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
    set(KGMP_BPF_ARCH arm64 PARENT_SCOPE)
  else()
    list(APPEND missing "a BPF target architecture for ${CMAKE_SYSTEM_PROCESSOR}")
  endif()

  if(missing)
    list(JOIN missing "; " why)
    message(STATUS "kgmp: eBPF monitors OFF, missing: ${why}")
    set(KGMP_HAVE_BPF OFF PARENT_SCOPE)
  else()
    message(STATUS "kgmp: eBPF monitors ON (${KGMP_BPF_CLANG}, ${KGMP_BPFTOOL} ${ver}, "
                   "libbpf ${major}.${minor} static)")
    set(KGMP_HAVE_BPF ON PARENT_SCOPE)
  endif()
endfunction()

get_property(_kgmp_bpf_checked GLOBAL PROPERTY KGMP_HAVE_BPF SET)
if(NOT _kgmp_bpf_checked)
  _kgmp_bpf_check()
  set_property(GLOBAL PROPERTY KGMP_HAVE_BPF ${KGMP_HAVE_BPF})
  set_property(GLOBAL PROPERTY KGMP_BPF_ARCH "${KGMP_BPF_ARCH}")
else()
  get_property(KGMP_HAVE_BPF GLOBAL PROPERTY KGMP_HAVE_BPF)
  get_property(KGMP_BPF_ARCH GLOBAL PROPERTY KGMP_BPF_ARCH)
endif()

# kgmp_libbpf: libbpf.a + -lelf -lz, for the loaders (static so that the 1.4 API we compile
# against is the one that runs).
if(KGMP_HAVE_BPF AND NOT TARGET kgmp_libbpf)
  add_library(kgmp_libbpf INTERFACE IMPORTED GLOBAL)
  target_include_directories(kgmp_libbpf INTERFACE "${KGMP_LIBBPF_INCLUDE_DIR}")
  target_link_libraries(kgmp_libbpf INTERFACE "${KGMP_LIBBPF_STATIC}" "${KGMP_LIBELF}"
                        "${KGMP_LIBZ}")
endif()

set(_KGMP_BPF_OBJECT_CMAKE "${CMAKE_CURRENT_LIST_FILE}")

# kgmp_bpf_object(NAME SOURCE [VMLINUX_H FILE] [HEADER_DEPS...])
#   Builds SOURCE (a .bpf.c) into ${NAME}.bpf.o and the skeleton ${NAME}.skel.h (struct NAME,
#   NAME__open(), ...) and creates the INTERFACE target ${NAME}_skel whose include directory
#   holds the skeleton. The .bpf.c sees the generated vmlinux.h, SOURCE's own directory (for
#   its shared header) and libbpf's headers; VMLINUX_H FILE uses that vmlinux.h instead of
#   the build machine's (scx_kgmp needs a sched_ext kernel's types). HEADER_DEPS are extra dependencies (clang's
#   depfile tracks the included headers too).
function(kgmp_bpf_object name source)
  if(NOT KGMP_HAVE_BPF)
    message(FATAL_ERROR "kgmp_bpf_object(${name}): KGMP_HAVE_BPF is OFF; guard the call")
  endif()
  cmake_parse_arguments(ARG "" "VMLINUX_H" "" ${ARGN})
  get_filename_component(source "${source}" ABSOLUTE)
  get_filename_component(srcdir "${source}" DIRECTORY)
  set(deps "")
  foreach(h IN LISTS ARG_UNPARSED_ARGUMENTS)
    get_filename_component(h "${h}" ABSOLUTE)
    list(APPEND deps "${h}")
  endforeach()

  # One vmlinux.h per directory that builds BPF objects (custom command outputs are only
  # reliably usable within their own directory).
  set(incdir "${CMAKE_CURRENT_BINARY_DIR}/bpf-include")
  set(vmlinux_h "${incdir}/vmlinux.h")
  get_property(have_vmlinux DIRECTORY PROPERTY KGMP_VMLINUX_H SET)
  if(ARG_VMLINUX_H)
    # A given vmlinux.h (another kernel's types, e.g. sched_ext's): its own include directory.
    set(incdir "${CMAKE_CURRENT_BINARY_DIR}/${name}-include")
    set(vmlinux_h "${incdir}/vmlinux.h")
    file(MAKE_DIRECTORY "${incdir}")
    add_custom_command(
      OUTPUT "${vmlinux_h}"
      COMMAND "${CMAKE_COMMAND}" -E copy_if_different "${ARG_VMLINUX_H}" "${vmlinux_h}"
      DEPENDS "${ARG_VMLINUX_H}"
      COMMENT "Copying ${ARG_VMLINUX_H} for ${name}"
      VERBATIM)
  elseif(NOT have_vmlinux)
    file(MAKE_DIRECTORY "${incdir}")
    add_custom_command(
      OUTPUT "${vmlinux_h}"
      COMMAND "${CMAKE_COMMAND}" -DKGMP_BPF_STEP=vmlinux "-DBPFTOOL=${KGMP_BPFTOOL}"
              "-DBTF=${KGMP_BPF_BTF}" "-DOUT=${vmlinux_h}" -P "${_KGMP_BPF_OBJECT_CMAKE}"
      DEPENDS "${KGMP_BPF_BTF}" "${_KGMP_BPF_OBJECT_CMAKE}"
      COMMENT "Generating vmlinux.h from ${KGMP_BPF_BTF}"
      VERBATIM)
    set_property(DIRECTORY PROPERTY KGMP_VMLINUX_H "${vmlinux_h}")
  endif()

  set(outdir "${CMAKE_CURRENT_BINARY_DIR}/${name}_skel")
  file(MAKE_DIRECTORY "${outdir}")
  set(obj_tmp "${outdir}/${name}.bpf.tmp.o")
  set(obj "${outdir}/${name}.bpf.o")
  set(skel "${outdir}/${name}.skel.h")
  set(depfile "${outdir}/${name}.bpf.d")

  # The object is linked with `bpftool gen object` (drops DWARF; keeps BTF) before the
  # skeleton embeds it.
  add_custom_command(
    OUTPUT "${obj}"
    COMMAND "${KGMP_BPF_CLANG}" -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_${KGMP_BPF_ARCH}
            -DBPF_NO_KFUNC_PROTOTYPES -fms-extensions -Wno-microsoft-anon-tag -Wall
            -I "${incdir}" -I "${srcdir}" -idirafter "${KGMP_LIBBPF_INCLUDE_DIR}"
            -MD -MF "${depfile}" -MT "${obj}"
            -c "${source}" -o "${obj_tmp}"
    COMMAND "${KGMP_BPFTOOL}" gen object "${obj}" "${obj_tmp}"
    DEPENDS "${source}" "${vmlinux_h}" ${deps}
    DEPFILE "${depfile}"
    COMMENT "Compiling BPF object ${name}.bpf.o"
    VERBATIM)
  add_custom_command(
    OUTPUT "${skel}"
    COMMAND "${CMAKE_COMMAND}" -DKGMP_BPF_STEP=skeleton "-DBPFTOOL=${KGMP_BPFTOOL}"
            "-DOBJ=${obj}" "-DNAME=${name}" "-DOUT=${skel}"
            "-DLIBBPF_H=${KGMP_LIBBPF_INCLUDE_DIR}/bpf/libbpf.h" -P "${_KGMP_BPF_OBJECT_CMAKE}"
    DEPENDS "${obj}" "${_KGMP_BPF_OBJECT_CMAKE}"
    COMMENT "Generating BPF skeleton ${name}.skel.h"
    VERBATIM)
  add_custom_target(${name}_skel_gen DEPENDS "${skel}")

  add_library(${name}_skel INTERFACE)
  target_include_directories(${name}_skel INTERFACE "${outdir}")
  add_dependencies(${name}_skel ${name}_skel_gen)
endfunction()
