# ctest driver: an exercise program built from a stage file with one classic mistake (tests/course/mistakes.json)
# must fail its check, and its output must say what the course promises for that mistake (EXPECT, a regular
# expression matched against the whole output).
execute_process(COMMAND ${PROGRAM} ${EXERCISE} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE status)
message("${out}${err}")
if(NOT status EQUAL 1)
  message(FATAL_ERROR "the check exited with ${status}, expected 1 (a failed check)")
endif()
file(READ "${MISTAKES}" json)
string(JSON expect GET "${json}" mistakes ${INDEX} expect)
if(NOT out MATCHES "${expect}")
  message(FATAL_ERROR "the output does not say what it should: '${expect}'")
endif()
