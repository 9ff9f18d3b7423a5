# Installs the build tree into WORK/prefix, then builds tests/package/hello against it twice:
# with find_package(kgmp) and with pkg-config, and runs both.
file(REMOVE_RECURSE ${WORK})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BIN} --prefix ${WORK}/prefix
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(rc)
  message(FATAL_ERROR "cmake --install failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SRC}/tests/package/hello -B ${WORK}/build -G Ninja
                        -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${WORK}/prefix
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the outside program with find_package(kgmp) failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/build RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the outside program failed")
endif()
execute_process(COMMAND ${WORK}/build/hello RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(rc OR NOT out MATCHES "hello from 100 goroutines")
  message(FATAL_ERROR "the outside program failed: ${out}")
endif()
# pkg-config
set(ENV{PKG_CONFIG_PATH} "${WORK}/prefix/lib/pkgconfig")
execute_process(COMMAND pkg-config --cflags --libs kgmp OUTPUT_VARIABLE flags RESULT_VARIABLE rc
                OUTPUT_STRIP_TRAILING_WHITESPACE)
if(rc)
  message(FATAL_ERROR "pkg-config --cflags --libs kgmp failed")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
execute_process(COMMAND ${CXX} ${SRC}/tests/package/hello/main.cpp -o ${WORK}/hello-pc ${flags}
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the outside program with pkg-config flags failed")
endif()
execute_process(COMMAND ${WORK}/hello-pc RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(rc OR NOT out MATCHES "hello from 100 goroutines")
  message(FATAL_ERROR "the pkg-config-built program failed: ${out}")
endif()
message(STATUS "package OK: find_package(kgmp) and pkg-config both build and run")
