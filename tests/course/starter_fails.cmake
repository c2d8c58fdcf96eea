# ctest driver: the exercise program built from the shipped starter must fail, naming the exercise's stage, the
# first index with the expected and the got values, and a hint. Skipped (the test's SKIP_REGULAR_EXPRESSION) when
# the starter has been edited: a student's work in progress, git says the file differs from the commit.
find_package(Git QUIET)
if(GIT_FOUND AND EXISTS "${SOURCE_DIR}/.git")
  execute_process(COMMAND ${GIT_EXECUTABLE} -C ${SOURCE_DIR} diff --quiet HEAD -- ${STARTER} RESULT_VARIABLE edited)
  if(edited EQUAL 1)
    message("${STARTER} has been edited (your work): the shipped starter's check is skipped")
    return()
  endif()
endif()
execute_process(COMMAND ${PROGRAM} ${EXERCISE} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE status)
message("${out}${err}")
if(NOT status EQUAL 1)
  message(FATAL_ERROR "the starter's check exited with ${status}, expected 1 (a failed check)")
endif()
if(ANSWERS)  # an answers exercise (port-N, 10-query-count): no stage code, no got/expected values
  set(patterns "FAILED \\([0-9]+ failing checks?; " "  FAIL  " "  hint: ")
else()
  set(patterns "FAILED \\([0-9]+ failing checks?; stage [0-9][0-9] " "  FAIL  stage [0-9][0-9]"
               "got [-0-9.e+a-z]+, expected [-0-9.e+a-z]+" "  hint: ")
endif()
foreach(pattern IN LISTS patterns)
  if(NOT out MATCHES "${pattern}")
    message(FATAL_ERROR "the starter's failure lacks '${pattern}'")
  endif()
endforeach()
