# The layers, checked at configure time: a file of area A (src/A/*, include/medllm/A/*) may include
# "medllm/B/..." only when B is A itself or an area A links (directly or through another area), and the recipe
# headers (medllm/train/cpt.h, rpo.h, recipe.h) are included only by train and the CLI. Linking alone does not
# catch an include of an inline-only header, so the includes are read from the files themselves.
#
# medllm_area() records each area's medllm_* dependencies in the global property MEDLLM_AREA_DEPS_<area>;
# medllm_check_layers() runs after every area is defined.

function(medllm_area_closure area out)
  set(seen)
  set(todo ${area})
  while(todo)
    list(POP_FRONT todo a)
    if(a IN_LIST seen)
      continue()
    endif()
    list(APPEND seen ${a})
    get_property(deps GLOBAL PROPERTY MEDLLM_AREA_DEPS_${a})
    list(APPEND todo ${deps})
  endwhile()
  set(${out} ${seen} PARENT_SCOPE)
endfunction()

function(medllm_check_layers)
  get_property(areas GLOBAL PROPERTY MEDLLM_AREAS)
  set(problems)
  foreach(area IN LISTS areas)
    medllm_area_closure(${area} allowed)
    file(GLOB_RECURSE files CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${area}/*.cpp ${PROJECT_SOURCE_DIR}/src/${area}/*.h
         ${PROJECT_SOURCE_DIR}/include/medllm/${area}/*.h)
    foreach(f IN LISTS files)
      file(STRINGS ${f} includes REGEX "^#include \"medllm/[a-z_]+/")
      file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${f})
      foreach(line IN LISTS includes)
        string(REGEX REPLACE "^#include \"medllm/([a-z_]+)/([^\"]+)\".*" "\\1;\\2" parts "${line}")
        list(GET parts 0 other)
        list(GET parts 1 header)
        if(NOT other IN_LIST allowed)
          list(APPEND problems "${rel} includes medllm/${other}/${header}, but area ${area} does not depend on ${other}")
        elseif(other STREQUAL "train" AND header MATCHES "^(cpt|rpo|recipe)\\.h$" AND NOT area STREQUAL "train")
          list(APPEND problems "${rel} includes the recipe header medllm/train/${header} (only train and the CLI may)")
        endif()
      endforeach()
    endforeach()
  endforeach()
  if(problems)
    list(JOIN problems "\n  " text)
    message(FATAL_ERROR "layer check (cmake/CheckLayers.cmake):\n  ${text}")
  endif()
endfunction()
