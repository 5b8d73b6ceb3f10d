# Edgekit.cmake: compile edgekit models into firmware targets.
#
#   execute_process(COMMAND edgekit cmake-dir OUTPUT_VARIABLE EDGEKIT_CMAKE_DIR
#                   OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
#   list(APPEND CMAKE_MODULE_PATH "${EDGEKIT_CMAKE_DIR}")
#   include(Edgekit)                       # or: find_package(edgekit CONFIG PATHS ...)
#
#   add_executable(app main.c)
#   edgekit_add_model(TARGET app NAME kws RECIPE model/kws.toml
#                     BACKEND_TARGET x86-tflite-fp32 [DEPENDS files...] [MAX_BYTES n])
#
# At build time this runs `edgekit build --recipe` and `edgekit embed`, producing
# <binary dir>/edgekit/<NAME>/<NAME>.c and .h, and adds them to TARGET (the folder is on its
# include path: #include "<NAME>.h"). The step reruns when the recipe, a file in DEPENDS, or a
# file the recipe reads (weights, the model's module, profile .toml files; recorded in a
# depfile) changes, and at no other time. edgekit's own build cache
# ($EDGEKIT_CACHE_DIR or ~/.cache/edgekit) makes a rerun with unchanged inputs cheap.
#
# EDGEKIT_EXECUTABLE: the Python interpreter that has edgekit installed; pass the one that
# printed this folder: -DEDGEKIT_EXECUTABLE="$(edgekit cmake-dir --python)". Without it:
# the EDGEKIT_PYTHON environment variable, then Python3_EXECUTABLE, then python3 on PATH.

include_guard(GLOBAL)

if(CMAKE_VERSION VERSION_LESS 3.20)
  message(FATAL_ERROR "Edgekit.cmake needs CMake 3.20 or newer (found ${CMAKE_VERSION})")
endif()

set(EDGEKIT_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")

if(NOT EDGEKIT_EXECUTABLE)
  if(DEFINED ENV{EDGEKIT_PYTHON})
    set(_edgekit_python "$ENV{EDGEKIT_PYTHON}")
  elseif(DEFINED Python3_EXECUTABLE)
    set(_edgekit_python "${Python3_EXECUTABLE}")
  else()
    find_program(_edgekit_python NAMES python3 python)
  endif()
  set(EDGEKIT_EXECUTABLE "${_edgekit_python}" CACHE FILEPATH
      "Python interpreter with edgekit installed (runs `python -m edgekit`)")
endif()

execute_process(
  COMMAND "${EDGEKIT_EXECUTABLE}" -m edgekit cmake-dir
  RESULT_VARIABLE _edgekit_rc OUTPUT_QUIET ERROR_VARIABLE _edgekit_err)
if(NOT _edgekit_rc EQUAL 0)
  message(FATAL_ERROR
    "edgekit: `${EDGEKIT_EXECUTABLE} -m edgekit` does not run (${_edgekit_err}).\n"
    "Set -DEDGEKIT_EXECUTABLE=<python with edgekit installed>.")
endif()

function(edgekit_add_model)
  cmake_parse_arguments(PARSE_ARGV 0 EK "" "TARGET;NAME;RECIPE;BACKEND_TARGET;MAX_BYTES" "DEPENDS")
  if(EK_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "edgekit_add_model: unknown arguments: ${EK_UNPARSED_ARGUMENTS}")
  endif()
  foreach(_key TARGET NAME RECIPE BACKEND_TARGET)
    if(NOT EK_${_key})
      message(FATAL_ERROR "edgekit_add_model: ${_key} is required\n"
        "usage: edgekit_add_model(TARGET <target> NAME <c_identifier> RECIPE <recipe.toml> "
        "BACKEND_TARGET <profile> [DEPENDS <files>...] [MAX_BYTES <n>])")
    endif()
  endforeach()
  if(NOT TARGET "${EK_TARGET}")
    message(FATAL_ERROR "edgekit_add_model: ${EK_TARGET} is not a target; "
      "call add_executable/add_library first")
  endif()
  if(NOT EK_NAME MATCHES "^[A-Za-z_][A-Za-z0-9_]*$")
    message(FATAL_ERROR "edgekit_add_model: NAME '${EK_NAME}' is not a valid C identifier "
      "(letters, digits and _, not starting with a digit)")
  endif()
  get_filename_component(_recipe "${EK_RECIPE}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  if(NOT EXISTS "${_recipe}")
    message(FATAL_ERROR "edgekit_add_model: recipe ${_recipe} does not exist")
  endif()
  get_filename_component(_recipe_dir "${_recipe}" DIRECTORY)
  set(_deps "${_recipe}")
  foreach(_dep IN LISTS EK_DEPENDS)
    get_filename_component(_dep "${_dep}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND _deps "${_dep}")
  endforeach()
  set(_out "${CMAKE_CURRENT_BINARY_DIR}/edgekit/${EK_NAME}")
  set(_embed_args)
  if(EK_MAX_BYTES)
    list(APPEND _embed_args --max-bytes "${EK_MAX_BYTES}")
  endif()
  set(_depfile_args)
  if(CMAKE_GENERATOR MATCHES "Make|Ninja")
    set(_depfile_args DEPFILE "${_out}/${EK_NAME}.d")
  endif()
  file(MAKE_DIRECTORY "${_out}")
  add_custom_command(
    OUTPUT "${_out}/${EK_NAME}.c" "${_out}/${EK_NAME}.h"
    COMMAND "${EDGEKIT_EXECUTABLE}" -m edgekit build --recipe "${_recipe}"
            --target "${EK_BACKEND_TARGET}" --out "${_out}/bundle" --quiet
            --depfile "${_out}/${EK_NAME}.d" --depfile-target "${_out}/${EK_NAME}.c"
    COMMAND "${EDGEKIT_EXECUTABLE}" -m edgekit embed "${_out}/bundle"
            --target "${EK_BACKEND_TARGET}" --name "${EK_NAME}" --out "${_out}" ${_embed_args}
    DEPENDS ${_deps}
    ${_depfile_args}
    WORKING_DIRECTORY "${_recipe_dir}"
    COMMENT "edgekit: model ${EK_NAME} from ${EK_RECIPE} for ${EK_BACKEND_TARGET}"
    VERBATIM)
  target_sources("${EK_TARGET}" PRIVATE "${_out}/${EK_NAME}.c" "${_out}/${EK_NAME}.h")
  target_include_directories("${EK_TARGET}" PUBLIC "${_out}")
  set_property(TARGET "${EK_TARGET}" APPEND PROPERTY EDGEKIT_MODELS "${EK_NAME}")
endfunction()
