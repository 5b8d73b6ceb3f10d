# find_package(edgekit CONFIG PATHS <output of `edgekit cmake-dir`>) loads this file.
include("${CMAKE_CURRENT_LIST_DIR}/Edgekit.cmake")
set(edgekit_FOUND TRUE)
